"""JEAN's recipe: RAD-NeRF's shape with the head conditioned on [audio code, expression code] (JEAN 3.3), and the
expression encoder trained before the field. The stages and their config are RAD-NeRF's (head, lips, torso)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from nerf.jean.expression import ExpressionTransformerConfig
from nerf.jean.expression_train import ExpressionTrain
from nerf.jean.face_crops import CODE, CROP, CropEncoderConfig
from nerf.radnerf.config import RadNerfConfig

FEATURE_WIDTH = {"geometric": 111, "blendshapes": 52, "ict": 57, "crop": CODE}
"""Per-frame expression features a recipe may name (read by :mod:`jobs.jean_data`) and their widths (``crop``: the
width of the crop encoder's code; its input is the aligned crop, :data:`INPUT_WIDTH`)."""
INPUT_WIDTH = {**FEATURE_WIDTH, "crop": CROP * CROP}
"""Width of the per-frame input a feature set is read as (``expression_features``)."""


@dataclass(frozen=True)
class JeanConfig(RadNerfConfig):
    """RAD-NeRF's model with JEAN's conditions: the head's audio net is a registered ``audio-lip`` encoder
    (``head.audio.source``, fine-tuned at ``lr_audio``) and its per-frame latent is the frame's expression code e_e
    (``head.latent_dim`` = the transformer's part width), so e_e reaches both the density and the colour net."""

    expression: ExpressionTransformerConfig = field(default_factory=ExpressionTransformerConfig)
    """The expression transformer's shape (its ``features`` width follows :attr:`features`)."""
    expression_train: ExpressionTrain = field(default_factory=ExpressionTrain)
    """How the per-identity transformer is trained before the field."""
    features: Literal["geometric", "blendshapes", "ict", "crop"] = "geometric"
    """Per-frame expression features (:data:`FEATURE_WIDTH`; docs/decisions.md, 'JEAN'). ``crop``: the code of a
    self-supervised encoder of aligned face crops (:mod:`nerf.jean.face_crops`), trained before the transformer."""
    crop_encoder: CropEncoderConfig = field(default_factory=CropEncoderConfig)
    """The ``crop`` features' encoder."""
    expression_mode: Literal["transformer", "features"] = "transformer"
    """``transformer``: e_e from the expression transformer (JEAN). ``features``: the raw features through a thin
    MLP trained with the field (the paper's Table 2 rows without the transformer: the ablation)."""
    ssl_audio: bool = True
    """The head's audio net is the contrastive ``audio-lip`` encoder (JEAN). False: RAD-NeRF's own audio net trained
    from scratch (Table 2's rows without the SSL encoder); the registered encoder still anchors the transformer."""
    thin_hidden: int = 64
    """Hidden width of the ``features`` mode's thin MLP."""
    ABSENT_IN_OLD_CONFIGS: ClassVar[dict[str, object]] = {}

    @property
    def input_width(self) -> int:
        """Width of a frame's ``expression_features`` input (:data:`INPUT_WIDTH`)."""
        return INPUT_WIDTH[self.features]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features not in FEATURE_WIDTH:
            raise ValueError(f"jean: unknown features {self.features!r} (known: {', '.join(FEATURE_WIDTH)})")
        if self.expression.features != FEATURE_WIDTH[self.features]:  # derived: follows the feature set
            object.__setattr__(self, "expression", replace(self.expression, features=FEATURE_WIDTH[self.features]))
        if self.expression_mode not in ("transformer", "features"):
            raise ValueError(f"jean: expression_mode {self.expression_mode!r} (transformer or features)")
        if self.head.latent_dim != self.expression.part:
            raise ValueError(f"jean: head.latent_dim ({self.head.latent_dim}) must be the expression code's width "
                             f"({self.expression.part}): the code is fed where RAD-NeRF feeds its latent")
        if not self.head.latent_in_density:
            raise ValueError("jean: head.latent_in_density must be on (the expression code conditions the density)")

