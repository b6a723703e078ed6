"""JEAN (joint expression and audio-guided NeRF): a talking head whose lips follow one source's audio and whose
expression follows another's. The expression transformer (:mod:`nerf.jean.expression`, trained per identity before
the field), the head conditioned on [audio code, expression code] (:mod:`nerf.jean.model`). Registered as the
``jean`` method; its models are registered as ``jean-<identity>``."""

from __future__ import annotations

from nerf import methods
from nerf.jean.config import JeanConfig
from nerf.jean.model import Jean
from nerf.jean.presets import PRESETS
from nerf.radnerf.config import RadNerfTrainerConfig

METHOD = methods.register(methods.Method(
    name="jean", version=1, model=Jean, model_config=JeanConfig, trainer_config=RadNerfTrainerConfig,
    presets=PRESETS, default_preset="cpu",
    description="JEAN: head conditioned on a contrastive audio code and a transformer's expression code"))
