"""DialogueNeRF's training presets: RAD-NeRF's with the people's codes and the motion forecasters.

* ``debug``: tiny grids and tiny forecasters at 64 px, a few steps; runs in seconds (tests, wiring checks).
* ``cpu``: RAD-NeRF's ``cpu`` preset (256 px) with the codes, plus the forecasters' few minutes of training: one
  network for a conversation's two people at about the cost of one RAD-NeRF identity, so that one joint network and
  separate ones compare at one budget.
* ``paper``: the paper's schedule (V-A): Adam at 2e-4, 600k steps of 2048 rays at 512 px, the pose TCN at 5e-5
  (GPU-days; the field stays RAD-NeRF's grids, the paper does not size its MLP).
"""

from __future__ import annotations

from dataclasses import replace

from nerf.config import ExperimentConfig
from nerf.dialogue.config import DialogueConfig
from nerf.dialogue.forecast import ForecastConfig, ForecastTrain
from nerf.radnerf.config import RadNerfStage, RadNerfTrainerConfig
from nerf.radnerf.presets import PRESETS as RADNERF


def _dialogue(base: ExperimentConfig, **kwargs: object) -> DialogueConfig:
    """RAD-NeRF's model config of ``base`` turned into DialogueNeRF's (``kwargs`` set DialogueNeRF's own fields)."""
    m = base.model
    fields = {f: getattr(m, f) for f in ("head", "torso", "grid", "sampler", "losses", "pose_refine", "pose_borrow")}
    return DialogueConfig(**fields, **kwargs)  # type: ignore[arg-type]


def _debug() -> ExperimentConfig:
    base = RADNERF["debug"]()
    tiny = ForecastConfig(levels=2, channels=8)
    quick = ForecastTrain(steps=5, batch=4, window=16)
    model = _dialogue(base, shape_dim=4, appearance_dim=4, torso_code_dim=4, expression_hidden=16,
                      pose_forecast=tiny, pose_train=quick, expression_forecast=tiny, expression_train=quick)
    return replace(base, method="dialogue", model=model)


def _cpu() -> ExperimentConfig:
    base = RADNERF["cpu"]()
    # a texel holds both people: 3 features a level, not 2 (at 6 min: +0.3 dB held out; docs/decisions.md)
    head = replace(base.model.head, spatial=replace(base.model.head.spatial, features_per_level=3))
    return replace(base, method="dialogue", model=replace(_dialogue(base), head=head))


def _paper() -> ExperimentConfig:
    base = RADNERF["paper"]()
    slow = ForecastTrain(steps=20_000, lr=5e-5)
    model = _dialogue(base, pose_train=slow, expression_train=slow)
    assert isinstance(base.trainer, RadNerfTrainerConfig)
    trainer = replace(base.trainer, size=512, rays_per_batch=2048,
                      head=RadNerfStage(steps=500_000, lr_net=2e-4), lips=RadNerfStage(steps=25_000, lr_net=2e-4),
                      torso=RadNerfStage(steps=100_000, lr_net=2e-4), checkpoint_every=10_000)
    return replace(base, method="dialogue", model=model, trainer=trainer)


PRESETS = {"debug": _debug, "cpu": _cpu, "paper": _paper}
"""Preset name -> a function building its config."""
