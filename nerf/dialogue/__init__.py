"""DialogueNeRF: a conversation's speaker and listener in one network. Each person is a pair of learnt codes
(:mod:`nerf.dialogue.model`); the speaker is driven by audio, the listener by its expression; both heads' poses
and the listener's expressions come from causal TCN forecasters (:mod:`nerf.dialogue.forecast`) trained before the
field. Registered as the ``dialogue`` method; its models are registered as ``dialogue-<conversation>``."""

from __future__ import annotations

from nerf import methods
from nerf.dialogue.config import DialogueConfig
from nerf.dialogue.model import Dialogue
from nerf.dialogue.presets import PRESETS
from nerf.radnerf.config import RadNerfTrainerConfig

METHOD = methods.register(methods.Method(
    name="dialogue", version=1, model=Dialogue, model_config=DialogueConfig, trainer_config=RadNerfTrainerConfig,
    presets=PRESETS, default_preset="cpu",
    description="DialogueNeRF: several people in one network (code pairs), role conditions, pose TCN"))
