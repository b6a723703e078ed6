"""An avatar's audio net taken from a registered ``audio-lip`` version (``model.head.audio.source``).

The source is pinned before training (``models:/audio-lip@champion`` -> ``models:/audio-lip/3``), so the run's
params and the checkpoint's config name the exact version the avatar used; its encoder's weights are downloaded
as tensors only and handed to the trainer (:class:`nerf.trainer.Trainer`'s ``pretrained``).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from typing import Any

from nerf.config import ExperimentConfig


def audio_source(cfg: ExperimentConfig) -> str:
    """The recipe's ``model.head.audio.source`` ("" for a method without one)."""
    head = getattr(cfg.model, "head", None)
    audio = getattr(head, "audio", None)
    return str(getattr(audio, "source", "") or "")


def audio_source_settable(cfg: ExperimentConfig) -> bool:
    """Whether the recipe's model has an audio net a learnt encoder can replace."""
    return hasattr(getattr(getattr(cfg.model, "head", None), "audio", None), "source")


def with_source(cfg: ExperimentConfig, source: str) -> ExperimentConfig:
    """The recipe with ``model.head.audio.source`` set."""
    head = cfg.model.head  # type: ignore[attr-defined]
    return replace(cfg, model=replace(cfg.model, head=replace(head, audio=replace(head.audio, source=source))))


def pin(cfg: ExperimentConfig, tracking_uri: str | None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The recipe with its audio source pinned to a version, and what was pinned (empty without a source).

    Raises:
        RegistryError: the model, alias or version does not exist; ValueError: not a ``models:/`` URI.
    """
    from jobs import tracking
    from jobs.registry import resolve

    source = audio_source(cfg)
    if not source:
        return cfg, {}
    uri = tracking.resolve_tracking_uri(tracking_uri)
    info = resolve(uri, source)
    pinned = f"models:/{info.name}/{info.version}"
    return with_source(cfg, pinned), {"audio_lip_model": pinned, "audio_lip_run": info.run_id,
                                       "audio_lip_requested": source}


def weights(cfg: ExperimentConfig, tracking_uri: str | None, key: str) -> dict[str, Any]:
    """The pinned encoder's state dict under the model's key of its audio net (``head.audio_net`` for RAD-NeRF)."""
    from jobs import tracking
    from jobs.registry import fetch_checkpoint
    from nerf.audio_lip.checkpoint import load_audio_lip

    uri = tracking.resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="parley-audio-lip-") as tmp:
        path, _ = fetch_checkpoint(uri, audio_source(cfg), tmp, reader=load_audio_lip)
        bundle = load_audio_lip(path)
    return {f"{key}.{k}": v for k, v in bundle.encoder.state_dict().items()}
