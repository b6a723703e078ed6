"""Files of the audio-lip models: a dict of tensors and JSON strings, read with ``torch.load(weights_only=True)``.

``parley-audio-lip/1`` holds the landmark autoencoder, the audio encoder and the landmark template;
``parley-sync-scorer/1`` holds the scorer. Both carry ``meta`` (JSON: dataset, clips, held-out metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerf.audio_lip.models import (
    AudioLipConfig,
    AudioLipEncoder,
    LandmarkAE,
    LandmarkAEConfig,
    SyncScorer,
    SyncScorerConfig,
)
from nerf.checkpoint import save_checkpoint

AUDIO_LIP_FORMAT = "parley-audio-lip/1"
SCORER_FORMAT = "parley-sync-scorer/1"


class AudioLipCheckpointError(ValueError):
    """A file that is not an audio-lip (or scorer) checkpoint this parley reads."""


def _config(cls: type, text: str) -> Any:
    d = json.loads(text)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class AudioLipBundle:
    """The landmark autoencoder, the audio encoder and the template their landmarks were aligned to."""

    lae: LandmarkAE
    encoder: AudioLipEncoder
    template: np.ndarray
    """float32 [68, 2] (:func:`nerf.audio_lip.data.rigid_template`)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {"format": AUDIO_LIP_FORMAT, "lae": self.lae.state_dict(), "encoder": self.encoder.state_dict(),
                "lae_config": json.dumps(asdict(self.lae.config)),
                "encoder_config": json.dumps(asdict(self.encoder.config)),
                "template": torch.from_numpy(np.asarray(self.template, np.float32)), "meta": json.dumps(self.meta)}


def _read(path: str | Path, fmt: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise AudioLipCheckpointError(f"{p}: no such file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a damaged or foreign file)
        raise AudioLipCheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__})") from e
    found = state.get("format") if isinstance(state, dict) else None
    if found != fmt:
        raise AudioLipCheckpointError(f"{p}: format {found!r}, expected {fmt!r}")
    return state


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write a bundle's or scorer's state (:meth:`AudioLipBundle.state`, :func:`scorer_state`) atomically, as every
    parley checkpoint is written (:func:`nerf.checkpoint.save_checkpoint`)."""
    return save_checkpoint(state, path)


def load_audio_lip(path: str | Path) -> AudioLipBundle:
    """Read a ``parley-audio-lip`` file; raises :class:`AudioLipCheckpointError` for anything else."""
    s = _read(path, AUDIO_LIP_FORMAT)
    lae = LandmarkAE(_config(LandmarkAEConfig, s["lae_config"]))
    lae.load_state_dict(s["lae"])
    enc = AudioLipEncoder(_config(AudioLipConfig, s["encoder_config"]))
    enc.load_state_dict(s["encoder"])
    return AudioLipBundle(lae.eval(), enc.eval(), s["template"].numpy(), json.loads(s["meta"]))


def scorer_state(scorer: SyncScorer, meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": SCORER_FORMAT, "scorer": scorer.state_dict(), "config": json.dumps(asdict(scorer.config)),
            "meta": json.dumps(meta)}


def load_scorer(path: str | Path) -> tuple[SyncScorer, dict[str, Any]]:
    """Read a ``parley-sync-scorer`` file: the scorer (eval mode) and its meta."""
    s = _read(path, SCORER_FORMAT)
    scorer = SyncScorer(_config(SyncScorerConfig, s["config"]))
    scorer.load_state_dict(s["scorer"])
    return scorer.eval(), json.loads(s["meta"])
