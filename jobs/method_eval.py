"""What a method's evaluation adds beyond the held-out images, looked up by method name (the platform's side of a
method: reading its extra inputs is the job layer's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nerf.trainer import Trainer


def method_metrics(method: str, dataset: str, s3_endpoint: str | None) -> Callable[[Trainer], dict[str, float]] | None:
    """What a method's evaluation adds beyond the held-out images (DialogueNeRF: its generated poses against the
    real ones), as a function of the trained trainer; None for a method with nothing to add."""
    if method != "dialogue":
        return None

    def dialogue(trainer: Trainer) -> dict[str, float]:
        from jobs.dialogue_data import frame_inputs
        from jobs.dialogue_eval import held_out_motion
        from nerf.dialogue.model import Dialogue

        assert isinstance(trainer.model, Dialogue)
        return held_out_motion(trainer.model, trainer.data, frame_inputs(dataset, trainer.data, s3_endpoint))

    return dialogue
