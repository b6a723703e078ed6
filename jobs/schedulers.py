"""Tune schedulers for sweeps crossed with identities.

A sweep's trials train different people. Their held-out PSNRs are not comparable across identities (one
person's clip is easier to fit than another's by several dB), so a single ASHA over all trials would stop
every trial of a harder identity as soon as an easier identity's trials reached the same rung, and that
identity would end up with no finished model. :class:`GroupedScheduler` runs one independent scheduler per
identity (per value of a config key): trials compete only with the trials of their own identity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


class GroupedScheduler(FIFOScheduler):
    """One scheduler per value of ``trial.config[key]``, each made by ``factory`` when its first trial arrives.

    Trials start in FIFO order (as with ASHA); every decision about a trial (continue, stop) is its group's.

    Args:
        factory: a new scheduler for one group (e.g. ``lambda: ASHAScheduler(grace_period=4)``).
        key: the config key that names a trial's group.
    """

    def __init__(self, factory: Callable[[], TrialScheduler], key: str = "identity"):
        super().__init__()
        self._factory = factory
        self._key = key
        self._groups: dict[str, TrialScheduler] = {}
        self._metric: str | None = None
        self._mode: str | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return all(g.set_search_properties(metric, mode, **spec) for g in self._groups.values())

    def group(self, trial: Trial) -> TrialScheduler:
        """The scheduler of the trial's group (made on first use)."""
        name = str(trial.config.get(self._key))
        if name not in self._groups:
            sched = self._factory()
            sched.set_search_properties(self._metric, self._mode)
            self._groups[name] = sched
        return self._groups[name]

    @property
    def groups(self) -> dict[str, TrialScheduler]:
        """Group name -> its scheduler."""
        return dict(self._groups)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self.group(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self.group(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        return self.group(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        self.group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self.group(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"[{self._key}={name}] {g.debug_string()}" for name, g in self._groups.items()) or \
            f"GroupedScheduler by {self._key}: no trials yet"


def asha_per_identity(time_attr: str = "training_iteration", max_t: int = 10_000, grace_period: int = 2,
                      reduction_factor: float = 2) -> GroupedScheduler:
    """ASHA within each identity's trials (see the module's docstring)."""
    factory = functools.partial(ASHAScheduler, time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                                reduction_factor=reduction_factor)  # a partial, not a closure: it pickles
    return GroupedScheduler(factory, key="identity")
