"""DialogueNeRF's recipe: RAD-NeRF's head and torso shared by several people, each a pair of learnt codes, the
head's condition slot fed by the role (speaker: audio; listener: expression), and the motion forecasters trained
before the field. The stages are RAD-NeRF's (head, lips, torso)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from nerf.dialogue.forecast import ForecastConfig, ForecastTrain
from nerf.radnerf.config import RadNerfConfig

EXPRESSION_WIDTH = 57
"""The listener condition: the frame's 57 ICT expression coefficients (``frames/`` ``expression``)."""


@dataclass(frozen=True)
class DialogueConfig(RadNerfConfig):
    """RAD-NeRF's model, shared by the people of a conversation (or any set of identities).

    The head's latent is ``[shape code | frame latent | appearance code]``: the density net sees the first two, the
    colour net all three (GRAF's split, paper IV-B). ``head.latent_dim`` is set to their sum, and the torso's latent
    ``[torso code | frame latent]`` likewise (``torso.latent_dim``).
    """

    shape_dim: int = 32
    """Per-person shape code (density and colour; spec 4.7-3)."""
    appearance_dim: int = 32
    """Per-person appearance code (colour only)."""
    frame_latent_dim: int = 4
    """RAD-NeRF's per-frame appearance latent (light, hair drift), kept beside the codes."""
    torso_code_dim: int = 8
    """Per-person code of the torso (its colour and its pose-driven deformation)."""
    torso_frame_dim: int = 8
    """Per-frame torso latent."""
    expression_dim: int = EXPRESSION_WIDTH
    """Width of the listener's expression condition."""
    expression_hidden: int = 64
    """Hidden width of the expression's projection into the condition slot."""
    pose_forecast: ForecastConfig = field(default_factory=ForecastConfig)
    """The head-pose TCN (spec 1.3-B)."""
    pose_train: ForecastTrain = field(default_factory=ForecastTrain)
    expression_forecast: ForecastConfig = field(default_factory=lambda: ForecastConfig(levels=5, channels=64))
    """The listener-expression TCN (spec 1.5-1b)."""
    expression_train: ForecastTrain = field(default_factory=ForecastTrain)
    warm_start: str = ""
    """A trained model of several people (a checkpoint file, or a registered ``models:/dialogue-<name>@<alias>``)
    whose shared network this one starts from: its fields, occupancy grid and condition projections; each new
    person's codes start at the mean of its people's (:meth:`nerf.dialogue.model.Dialogue.shared_weights`). A joint
    network over many people is the prior a new person fine-tunes from, as few-shot avatars pretrain on several
    identities. Empty: from scratch."""
    ABSENT_IN_OLD_CONFIGS: ClassVar[dict[str, object]] = {}

    @property
    def head_latent_width(self) -> int:
        return self.shape_dim + self.frame_latent_dim + self.appearance_dim

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [f"{k}={getattr(self, k)}" for k in ("shape_dim", "appearance_dim", "frame_latent_dim",
                                                     "torso_code_dim", "torso_frame_dim", "expression_dim",
                                                     "expression_hidden") if getattr(self, k) < 0]
        if bad:
            raise ValueError(f"dialogue: invalid {', '.join(bad)} (>= 0)")
        # derived: the latents' widths follow the codes', so one key (``--set model.shape_dim=16``) changes both
        if self.head.latent_dim != self.head_latent_width:
            object.__setattr__(self, "head", replace(self.head, latent_dim=self.head_latent_width))
        torso = self.torso_code_dim + self.torso_frame_dim
        if self.torso.latent_dim != torso:
            object.__setattr__(self, "torso", replace(self.torso, latent_dim=torso))
