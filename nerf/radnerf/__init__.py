"""RAD-NeRF (Tang et al. 2022): audio-spatial decomposed grids for the head, a pseudo-3D torso, per-frame
appearance latents; trained head -> lips -> torso. Registered as the ``radnerf`` method."""

from __future__ import annotations

from nerf import methods
from nerf.radnerf.config import RadNerfConfig, RadNerfTrainerConfig
from nerf.radnerf.model import RadNerf
from nerf.radnerf.presets import PRESETS

METHOD = methods.register(methods.Method(
    name="radnerf", version=2, model=RadNerf, model_config=RadNerfConfig, trainer_config=RadNerfTrainerConfig,
    presets=PRESETS, default_preset="cpu", reads_versions=(1,),
    description="RAD-NeRF: audio-spatial decomposed head grids, pseudo-3D torso, per-frame latents"))
"""Format 2 adds the config's ``method``; format 1 checkpoints (without it) read the same."""
