"""ASHA within identities: a sweep never stops one person's trials because another person's PSNRs are higher."""

from __future__ import annotations

import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from jobs.schedulers import GroupedScheduler, asha_per_identity


def _trial(identity: str, k: int) -> Trial:
    # real Tune trials (stub: no trainable registered, nothing runs)
    return Trial("trial_main", config={"identity": identity, "k": k}, stub=True)


def _first_rung(sched: TrialScheduler, trials: list[Trial], psnr: dict[str, float]) -> dict[str, str]:
    for t in trials:
        sched.on_trial_add(None, t)
    return {t.config["identity"] + str(t.config["k"]): sched.on_trial_result(
        None, t, {"training_iteration": 1, "val_psnr": psnr[t.config["identity"] + str(t.config["k"])]})
        for t in trials}


PSNR = {"easy0": 30.0, "easy1": 29.0, "hard0": 20.0, "hard1": 19.0}


def test_one_asha_over_identities_would_starve_the_harder_one():
    """The failure the grouped scheduler exists for, shown with Ray's own ASHA over all trials."""
    sched = ASHAScheduler(metric="val_psnr", mode="max", grace_period=1, reduction_factor=2, max_t=10)
    trials = [_trial("easy", 0), _trial("easy", 1), _trial("hard", 0), _trial("hard", 1)]
    act = _first_rung(sched, trials, PSNR)
    assert act["hard0"] == act["hard1"] == TrialScheduler.STOP


def test_grouped_asha_keeps_the_best_trial_of_every_identity():
    sched = asha_per_identity(grace_period=1, reduction_factor=2, max_t=10)
    assert sched.set_search_properties("val_psnr", "max")
    trials = [_trial("easy", 0), _trial("easy", 1), _trial("hard", 0), _trial("hard", 1)]
    act = _first_rung(sched, trials, PSNR)
    assert act == {"easy0": TrialScheduler.CONTINUE, "easy1": TrialScheduler.STOP,
                   "hard0": TrialScheduler.CONTINUE, "hard1": TrialScheduler.STOP}
    assert set(sched.groups) == {"easy", "hard"}
    assert "identity=hard" in sched.debug_string()
    # a trial that completes or is removed leaves its own group's books only
    sched.on_trial_complete(None, trials[2], {"training_iteration": 2, "val_psnr": 21.0})
    sched.on_trial_remove(None, trials[3])
    assert sched.on_trial_result(None, trials[0], {"training_iteration": 2, "val_psnr": 31.0}) == \
        TrialScheduler.CONTINUE
    # Tune checkpoints its scheduler with the experiment state
    assert isinstance(pickle.loads(pickle.dumps(sched)), GroupedScheduler)


def test_grouped_scheduler_needs_a_metric():
    sched = asha_per_identity()
    with pytest.raises(ValueError, match="metric"):
        sched.on_trial_add(None, _trial("a", 0))
