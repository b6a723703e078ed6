"""What every method's recipe has: stages with their learning rates, the trainer's settings, and their JSON form.

A method subclasses :class:`StageConfig` (one ``lr_<group>`` field per parameter group its model returns) and
:class:`TrainerConfig` (one :class:`StageConfig` field per stage, named in ``STAGES``, plus its own settings);
:class:`ExperimentConfig` pairs them with the method's model config. JSON keys are the dataclasses' field names,
so ``--set trainer.head.lr_grid=0.02`` and sweep spaces address the same paths as the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

DEFAULT_METHOD = "radnerf"
"""The method of a config or checkpoint that names none (every one written before there were several)."""


@dataclass(frozen=True)
class StageConfig:
    """Optimisation of one stage: its steps, and a learning rate per parameter group (``lr_<group>`` fields of a
    method's subclass) decaying exponentially to ``lr_final`` of its start over the stage."""

    steps: int
    """Optimiser steps (0 skips the stage)."""
    lr_final: float = 0.1
    """The learning rate decays exponentially to this fraction of its start over the stage."""

    def __post_init__(self) -> None:
        # Adam checks only its default learning rate, not a parameter group's: a negative one would train backwards
        rates = [f.name for f in fields(self) if f.name.startswith("lr_") and f.name != "lr_final"]
        bad = [f"{k}={getattr(self, k)}" for k in ("steps", *rates) if getattr(self, k) < 0]
        if not 0.0 < self.lr_final <= 1.0:
            bad.append(f"lr_final={self.lr_final}")
        if bad:
            raise ValueError(f"stage config: invalid {', '.join(bad)} (steps and learning rates must be >= 0, "
                             "lr_final a fraction in (0, 1])")

    def lr(self, group: str) -> float:
        """The learning rate of a parameter group (the ``lr_<group>`` field).

        Raises:
            KeyError: the stage config has no rate for the group (a model/config mismatch, named).
        """
        value = getattr(self, f"lr_{group}", None)
        if group == "final" or not isinstance(value, int | float):
            raise KeyError(f"{type(self).__name__} has no learning rate lr_{group} for the parameter group {group!r}")
        return float(value)


@dataclass(frozen=True)
class TrainerConfig:
    """How one identity is trained, whatever the method (a method's subclass adds a :class:`StageConfig` field per
    stage, listed in order in ``STAGES``)."""

    STAGES: ClassVar[tuple[str, ...]] = ()
    """The method's stages in training order; each is a :class:`StageConfig` field of the subclass."""

    size: int = 256
    """Training image side (the person crop scaled)."""
    rays_per_batch: int = 4096
    """Rays per step."""
    frames_per_batch: int = 4
    """Frames the rays of one step come from."""
    face_fraction: float = 0.5
    """Share of a batch's rays drawn inside the face rectangle."""
    error_map: int = 0
    """Cells per side of each training frame's error map (:class:`nerf.rays.ErrorMap`; 0: none). ``error_fraction``
    of a batch's rays are drawn from it, in proportion to the recent error; the rest of the batch, after the
    face's share, anywhere. Reset at each stage's start."""
    error_fraction: float = 0.25
    """Share of a batch's rays drawn from the error map (with ``error_map``)."""
    ema_decay: float = 0.95
    """Exponential moving average of weights, updated every step; evaluation and rendering use it."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and at the end of every stage)."""
    max_frames: int | None = None
    """Use only the first frames of the identity (before the held-out split); None for all."""
    seed: int = 0
    """Seed of the initial weights and of every random draw of training (rays, frames, jitter): two trainers with
    the same config and frames start from the same weights and draw the same batches, and on the CPU (same torch,
    same thread count) train to the same weights bit for bit. On a GPU some kernels add in a varying order."""

    def __post_init__(self) -> None:
        share = self.face_fraction + (self.error_fraction if self.error_map else 0.0)
        if self.face_fraction < 0 or self.error_fraction < 0 or share > 1.0:
            raise ValueError(f"trainer config: face_fraction ({self.face_fraction}) and error_fraction "
                             f"({self.error_fraction}) must be >= 0 and sum to at most 1")
        if not 0 <= self.error_map <= self.size:
            raise ValueError(f"trainer config: error_map={self.error_map} must be in [0, size={self.size}]")
        for name in self.STAGES:
            if not isinstance(getattr(self, name, None), StageConfig):
                raise TypeError(f"{type(self).__name__}: stage {name!r} has no StageConfig field")

    def stage(self, name: str) -> StageConfig:
        """The stage's config.

        Raises:
            KeyError: not a stage of this method (the stages are named).
        """
        if name not in self.STAGES:
            raise KeyError(f"no stage {name!r} (stages: {', '.join(self.STAGES)})")
        value: StageConfig = getattr(self, name)
        return value

    def total_steps(self) -> int:
        """Steps of every stage together."""
        return sum(self.stage(s).steps for s in self.STAGES)

    def scaled(self, factor: float) -> TrainerConfig:
        """Every stage's steps times ``factor`` (rounded; a stage with steps keeps at least one)."""
        return dataclasses.replace(self, **{  # type: ignore[arg-type]
            s: dataclasses.replace(self.stage(s), steps=max(int(round(self.stage(s).steps * factor)),
                                                            1 if self.stage(s).steps else 0))
            for s in self.STAGES})


@dataclass(frozen=True)
class ExperimentConfig:
    """A complete training recipe: which method, its model's shape and its training."""

    name: str
    model: Any
    """The method's model config (a frozen dataclass, e.g. :class:`nerf.radnerf.config.RadNerfConfig`)."""
    trainer: TrainerConfig
    method: str = DEFAULT_METHOD
    """The method (:mod:`nerf.methods`)."""


def config_to_json(config: ExperimentConfig) -> str:
    """The config as JSON (sorted keys: equal configs give equal strings)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str) -> ExperimentConfig:
    """Inverse of :func:`config_to_json`; a config without ``method`` is :data:`DEFAULT_METHOD`'s.

    Raises:
        ValueError: a key the config does not have (named), an unknown method, or malformed JSON.
    """
    from nerf import methods

    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("config: not a JSON object")
    unknown = sorted(set(data) - {f.name for f in fields(ExperimentConfig)})
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} for ExperimentConfig")
    try:
        method = methods.get(str(data.get("method", DEFAULT_METHOD)))
    except KeyError as e:
        raise ValueError(e.args[0]) from e
    return ExperimentConfig(name=str(data.get("name", "")), method=method.name,
                            model=from_dict(method.model_config, data.get("model", {}), "config.model"),
                            trainer=from_dict(method.trainer_config, data.get("trainer", {}), "config.trainer"))


def from_dict(cls: Any, data: dict[str, Any], where: str) -> Any:
    """A frozen dataclass from its :func:`dataclasses.asdict` form (nested dataclasses by their type hints; lists as
    tuples). A field missing from ``data`` takes the class's ``ABSENT_IN_OLD_CONFIGS`` value, else its default: a
    field added with a default that changes the model stands for the old behaviour when an old config lacks it.

    Raises:
        ValueError: a key the class does not have (named with ``where``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__} (known: {sorted(names)})")
    kwargs: dict[str, Any] = {k: v for k, v in getattr(cls, "ABSENT_IN_OLD_CONFIGS", {}).items() if k not in data}
    for k, v in data.items():
        t = hints[k]
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            kwargs[k] = from_dict(t, v, f"{where}.{k}")
        elif isinstance(v, list):
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)
