"""RAD-NeRF's recipe: the model's shape (fields, occupancy grid, sampler, loss weights) and its three stages."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from nerf.config import StageConfig, TrainerConfig
from nerf.radnerf.fields import HeadFieldConfig, TorsoFieldConfig
from nerf.rendering import OccupancyGridConfig, SamplerConfig


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the photometric MSE has weight 1)."""

    alpha_entropy: float = 1e-4
    """Binary entropy of each ray's accumulated alpha: pushes the head (and torso) to be opaque or empty."""
    ambient_l1: float = 1e-2
    """L1 of the audio coordinate on rays outside ``ambient_region``: audio may only move the face. Stronger than
    RAD-NeRF's 1e-4, which lets the audio of a short clip work as a time code that moves hair, eyes and brows on new
    audio (measurements: docs/decisions.md, 'RAD-NeRF defaults', ambient_l1)."""
    ambient_region: Literal["face", "mouth"] = "mouth"
    """Where the audio coordinate may be non-zero (``ambient_l1`` applies outside it): the face rectangle
    (RAD-NeRF) or the mouth region (the lips and jaw, :func:`nerf.rays.mouth_rect`). ``mouth`` by default: with
    ``ambient_l1`` at 1e-2 it raised held-out head PSNR and mostly closed the gain held-out frames got from
    training frames' audio (measurements: docs/decisions.md, 'RAD-NeRF defaults', ambient_l1)."""
    lips_lpips: float = 0.01
    """LPIPS on the lip patch in the lips stage."""
    lips_mse: float = 1.0
    """MSE on the lip patch in the lips stage."""
    head_mask: float = 0.01
    """Binary cross-entropy of the head's accumulated alpha against the parsing's head region, in the head and
    lips stages: keeps the head's silhouette on the parsed one (the band of background just outside the head held
    a quarter to a third of held-out error). 0.01 raised held-out head PSNR over three seeds; 0.1 lowered training
    and held-out PSNR (measurements: docs/decisions.md, 'RAD-NeRF defaults', head_mask)."""
    latent_smooth: float = 0.0
    """Mean squared difference of the appearance latents of consecutive training frames (same clip, at most
    :data:`nerf.data.LATENT_PAIR_GAP` frames apart), head latents in the head and lips stages, torso latents in
    the torso stage: a latent that drifts slowly in time is one that held-out frames, which borrow their nearest
    training frames' latents, can predict. Off by default: it did not raise held-out PSNR, and the latents already
    drift slowly (measurements: docs/decisions.md, 'RAD-NeRF defaults', latent_smooth)."""
    pose_smooth: float = 0.0
    """Mean squared difference of the head pose corrections (:attr:`RadNerfConfig.pose_refine`; radians and
    metres) of consecutive training frames (the pairs of ``latent_smooth``), in the head and lips stages: a frame's
    correction is learnt only from the few rays of it in a batch, while the tracking error it corrects drifts
    slowly, and held-out frames borrow their nearest training frames' corrections. Off by default: it smoothed the
    corrections but lowered held-out head PSNR on both clips tried; a frame's correction is not noise to average
    out (measurements: docs/decisions.md, 'RAD-NeRF defaults', pose_smooth)."""
    grid_tv: float = 0.0
    """Total variation of the head's feature planes, spatial and audio (:meth:`nerf.encoders.PlaneEncoder.
    total_variation`: the mean squared difference of neighbouring texels, averaged over levels), in the head and
    lips stages: a smoothness prior after K-Planes; texels that no training ray reaches, or that would fit one
    training view's detail, follow their neighbours. Off by default: +0.2 dB held-out head PSNR at 3000 head
    steps, but over whole 30-min runs within the spread, with worse LPIPS and ~10% slower head steps; never on
    the torso, where it lowered held-out PSNR (measurements: docs/decisions.md, 'RAD-NeRF defaults', grid_tv)."""
    ABSENT_IN_OLD_CONFIGS: ClassVar[dict[str, object]] = {"ambient_region": "face"}
    """Fields whose absence from a saved config means the behaviour from before they existed (see
    :class:`nerf.radnerf.fields.HeadFieldConfig`)."""
    torso_mask: float = 0.0
    """Binary cross-entropy of the torso's alpha against the parsing's body (torso + neck) outside the head, meant
    to keep the torso off the background on frames it has not seen. Off by default: its effect on held-out PSNR
    was inside the run-to-run spread (measurements: docs/decisions.md, 'RAD-NeRF defaults', torso_mask)."""

    def __post_init__(self) -> None:
        # a negative weight would reward what the term penalises (rough planes, a transparent head, ...)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        bad = [f"{k}={v}" for k, v in values.items() if isinstance(v, int | float) and not v >= 0]
        if bad:
            raise ValueError(f"loss weights: invalid {', '.join(bad)} (weights must be >= 0)")



@dataclass(frozen=True)
class RadNerfConfig:
    """Everything that shapes the model (not how it is trained)."""

    head: HeadFieldConfig = field(default_factory=HeadFieldConfig)
    torso: TorsoFieldConfig = field(default_factory=TorsoFieldConfig)
    grid: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    pose_refine: bool = False
    """Learn a rigid correction of each training frame's head pose (rotation and translation, zero at the start)
    with the head: the tracked poses are off by about a degree and a few millimetres (a 3DMM fit to 2D
    landmarks), and a field trained on misaligned views averages them into blur. Held-out frames and new audio
    take the corrections of the training frames their latents come from, or the mean (:attr:`pose_borrow`). The
    learning rate is :attr:`RadNerfStage.lr_pose`.

    Off by default, as in RAD-NeRF (the ``paper`` preset keeps the tracked poses); on in the ``cpu`` preset: at the
    head stage's end +1.5 dB held-out head PSNR on WDA_BobMenendez_000, -0.35 and -0.3 dB on the other two shared
    clips, steps ~7% slower, and sharper, better-synced mouths over whole runs (measurements: docs/decisions.md,
    'RAD-NeRF defaults', pose_refine)."""
    pose_borrow: Literal["mean", "nearest"] = "nearest"
    """Which correction a frame without one of its own (held-out frames, poses given to a render) takes, with
    :attr:`pose_refine`: ``mean``, the mean over all training frames (the corrections' systematic part, the offset
    between the field's head and the tracker's), or ``nearest``, the mean over the training frames its latents
    come from (``latent_from`` of :meth:`nerf.radnerf.model.RadNerf.novel_conditions`; the nearest one in time by
    default). A frame rendered under a training frame's pose (the driving track of :class:`nerf.avatar.Avatar`)
    takes that frame's own correction either way.

    ``nearest`` by default: better on two of the three shared clips, worse on one, and means over the last few
    training frames were no better than the better of the two; which correction predicts a held-out frame's is a
    property of the clip, not a rule (measurements: docs/decisions.md, 'RAD-NeRF defaults', pose_borrow)."""

    def __post_init__(self) -> None:
        if self.pose_borrow not in ("mean", "nearest"):
            raise ValueError(f"pose_borrow must be 'mean' or 'nearest', got {self.pose_borrow!r}")




@dataclass(frozen=True)
class RadNerfStage(StageConfig):
    """A RAD-NeRF stage's learning rates: feature planes, networks (MLPs and latents), head pose corrections."""

    lr_grid: float = 1e-2
    """Learning rate of feature planes."""
    lr_net: float = 1e-3
    """Learning rate of MLPs and latents."""
    lr_pose: float = 5e-4
    """Learning rate of the head pose corrections (only with :attr:`RadNerfConfig.pose_refine`)."""
    lr_audio: float = 5e-6
    """Learning rate of a learnt audio-lip encoder (``model.head.audio.source``) fine-tuned with the head (JEAN's
    rate, supp. 8.4.3); 0 keeps it frozen. The head's own audio net is in ``net``."""


@dataclass(frozen=True)
class RadNerfTrainerConfig(TrainerConfig):
    """RAD-NeRF's stages: the head, a lip fine-tune with LPIPS on a patch, then the torso under the frozen head."""

    STAGES: ClassVar[tuple[str, ...]] = ("head", "lips", "torso")

    head: RadNerfStage = field(default_factory=lambda: RadNerfStage(steps=2000))
    lips: RadNerfStage = field(default_factory=lambda: RadNerfStage(steps=300, lr_grid=2e-3, lr_net=2e-4))
    torso: RadNerfStage = field(default_factory=lambda: RadNerfStage(steps=1000))
    lips_patch: int = 48
    """Side of the lip patch (rays) of the lips stage."""
