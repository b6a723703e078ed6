"""JEAN's training presets: RAD-NeRF's with JEAN's conditions (``head.latent_dim`` = the expression code's width,
the audio net taken from the ``audio-lip`` champion and fine-tuned at 5e-6).

* ``debug``: tiny grids and a tiny transformer at 64 px, a few steps; runs in seconds (tests, wiring checks).
* ``cpu``: RAD-NeRF's ``cpu`` preset (256 px, about half an hour per identity on 2 cores) plus the transformer's
  800 steps, so that JEAN and RAD-NeRF compare at one budget.
* ``paper``: JEAN's own NeRF (supp. 8.4): the implicit 8x128 MLP with 10 position octaves, no torso, 2048 rays of
  one frame per step, lr 5e-4 decaying to 5e-5 over 400k steps, at 512 px (GPU-days).
"""

from __future__ import annotations

from dataclasses import replace

from nerf.config import ExperimentConfig
from nerf.encoders import FrequencyEncoderConfig
from nerf.jean.config import JeanConfig
from nerf.jean.expression import ExpressionTransformerConfig
from nerf.jean.expression_train import ExpressionTrain
from nerf.jean.face_crops import CropEncoderConfig
from nerf.radnerf.config import RadNerfStage, RadNerfTrainerConfig
from nerf.radnerf.presets import PRESETS as RADNERF

SOURCE = "models:/audio-lip@champion"
"""The audio encoder a JEAN recipe starts from; training pins the alias to its version."""


def _jean(base: ExperimentConfig, **kwargs: object) -> JeanConfig:
    """RAD-NeRF's model config of ``base`` turned into JEAN's (``kwargs`` set JEAN's own fields)."""
    m = base.model
    expression = kwargs.get("expression", ExpressionTransformerConfig())
    assert isinstance(expression, ExpressionTransformerConfig)
    head = replace(m.head, latent_dim=expression.part, latent_in_density=True,  # type: ignore[attr-defined]
                   audio=replace(m.head.audio, source=SOURCE))  # type: ignore[attr-defined]
    fields = {f: getattr(m, f) for f in ("torso", "grid", "sampler", "losses", "pose_refine", "pose_borrow")}
    return JeanConfig(head=head, **fields, **kwargs)  # type: ignore[arg-type]


def _debug() -> ExperimentConfig:
    base = RADNERF["debug"]()
    tiny = ExpressionTransformerConfig(width=16, hidden=32, layers=1, heads=2, feedforward=32)
    return replace(base, method="jean", model=_jean(base, expression=tiny,
                                                    expression_train=ExpressionTrain(steps=10, batch=8),
                                                    crop_encoder=CropEncoderConfig(width=4, steps=10, batch=16)))


def _cpu() -> ExperimentConfig:
    base = RADNERF["cpu"]()
    return replace(base, method="jean", model=_jean(base))


def _paper() -> ExperimentConfig:
    base = RADNERF["paper"]()
    model = _jean(base)
    head = replace(model.head, backbone="frequency", frequency=FrequencyEncoderConfig(10), mlp_hidden=128,
                   mlp_layers=8, latent_in_density=True)
    assert isinstance(base.trainer, RadNerfTrainerConfig)
    trainer = replace(base.trainer, size=512, rays_per_batch=2048, frames_per_batch=1,
                      head=RadNerfStage(steps=400_000, lr_net=5e-4, lr_final=0.1), lips=RadNerfStage(steps=0),
                      torso=RadNerfStage(steps=0), checkpoint_every=10_000)
    return replace(base, method="jean", model=replace(model, head=head), trainer=trainer)


PRESETS = {"debug": _debug, "cpu": _cpu, "paper": _paper}
"""Preset name -> a function building its config."""
