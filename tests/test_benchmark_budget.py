"""Helpers of ``benchmarks/train.py`` that the benchmark itself only exercises when it runs for half an hour: the
time-budget planning (stages are re-sized from their measured pace so that the run ends on its budget) and the
report's split of held-out frames into seen and new views.

The trainer is real (a debug-preset trainer on the small dataset, which :meth:`nerf.trainer.Trainer.resize_stage`
re-sizes), the clock is simulated: each stage runs at a set pace unlike the one timed before training."""

from __future__ import annotations

import pytest

from benchmarks.train import SHARES, CurveSchedule, Run, budget_steps, replan_to_budget, view_split
from jobs.train import load_identity, lpips_module
from nerf.methods import get as get_method
from nerf.methods import preset
from nerf.trainer import StepResult, Trainer
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.helpers import with_steps as _steps

STAGES = get_method("radnerf").stages


def _simulate(trainer: Trainer, run: Run, replan, pace: dict[str, float]) -> None:  # noqa: ANN001
    """Every stage's steps (as ``replan`` re-sizes them) on a simulated clock: ``pace[stage]`` seconds a step."""
    for stage in STAGES:
        step = 0
        while step < trainer.stage_config(stage).steps:
            step += 1
            run.train_s += pace[stage]
            run.stage_s[stage] = run.stage_s.get(stage, 0.0) + pace[stage]
            replan(trainer, run, StepResult(stage=stage, step=step, global_step=0, losses={}, loss=0.0, lr=0.0,
                                            samples=0, seconds=pace[stage]))


@pytest.mark.parametrize("pace", [{"head": 2.0, "lips": 1.0, "torso": 0.5}, {"head": 0.6, "lips": 1.5, "torso": 1.3}])
def test_replan_keeps_the_run_to_its_budget(small_dataset, pace):
    budget = 1000.0
    timed = {"head": 1.0, "lips": 1.0, "torso": 1.0}  # what the few steps timed before training said
    planned = {s: int(budget * SHARES[s] / timed[s]) for s in STAGES}
    cfg = _steps(preset("debug"), head=planned["head"], lips=planned["lips"], torso=planned["torso"])
    trainer = Trainer(cfg, load_identity(str(small_dataset), IDENTITY, 64), lpips=lpips_module())
    run = Run("grid", trainer.config)
    replan = replan_to_budget(timed, budget, SHARES)
    _simulate(trainer, run, replan, pace)
    assert run.train_s == pytest.approx(budget, rel=0.02)
    # the head keeps to its share whatever its pace; the lips and torso split what it left
    assert run.stage_s["head"] == pytest.approx(budget * SHARES["head"], rel=0.02)
    assert run.config.trainer.head.steps == pytest.approx(budget * SHARES["head"] / pace["head"], rel=0.02)
    assert run.config == trainer.config


def test_replan_keeps_a_head_only_run_to_its_budget(small_dataset):
    """The baseline: the head stage alone, timed at 1.0 s a step, runs at 0.7 (and still ends on its budget)."""
    cfg = _steps(preset("debug"), head=300, lips=0, torso=0)
    trainer = Trainer(cfg, load_identity(str(small_dataset), IDENTITY, 64))
    run = Run("baseline", trainer.config)
    _simulate(trainer, run, replan_to_budget({"head": 1.0}, 300.0, {"head": 1.0}), {"head": 0.7, "lips": 1.0,
                                                                                 "torso": 1.0})
    assert run.train_s == pytest.approx(300.0, rel=0.02)
    assert run.config.trainer.head.steps == pytest.approx(300.0 / 0.7, rel=0.02)
    assert "lips" not in run.stage_s and "torso" not in run.stage_s


def test_no_stage_runs_past_its_cap(small_dataset):
    """The benchmark's caps (the preset's step counts): a stage that would fit more steps in its share stops at its
    cap, and neither re-sizing from its pace nor the budget the head leaves pushes a later stage past its own."""
    budget = 1000.0
    timed = {"head": 1.0, "lips": 1.0, "torso": 1.0}
    cap = {"head": 300, "lips": 20, "torso": 150}
    planned = budget_steps(timed, budget, SHARES, cap)
    assert planned == cap  # 700 / 50 / 250 steps would fit
    assert budget_steps(timed, budget, SHARES, {"head": 10_000, "lips": 20, "torso": 150})["head"] == 700
    cfg = _steps(preset("debug"), head=planned["head"], lips=planned["lips"], torso=planned["torso"])
    trainer = Trainer(cfg, load_identity(str(small_dataset), IDENTITY, 64), lpips=lpips_module())
    run = Run("grid", trainer.config)
    replan = replan_to_budget(timed, budget, SHARES, cap)
    pace = {"head": 0.5, "lips": 0.5, "torso": 0.5}  # twice as fast as timed: every stage could take more steps
    _simulate(trainer, run, replan, pace)
    assert {s: trainer.stage_config(s).steps for s in STAGES} == cap
    assert run.train_s == pytest.approx(0.5 * sum(cap.values()))  # ends early: the budget is a limit


def test_view_split_separates_new_views_from_seen_ones():
    rows = [{"psnr": 30.0, "view_gap_deg": 0.4}, {"psnr": 28.0, "view_gap_deg": 2.0},
            {"psnr": 20.0, "view_gap_deg": 5.5}]
    views = view_split(rows)
    assert views["seen_views"] == {"frames": 2, "psnr": 29.0}
    assert views["new_views"] == {"frames": 1, "psnr": 20.0}
    assert view_split(rows[:1])["new_views"]["frames"] == 0


def test_curve_schedule_adds_the_early_points_to_the_regular_ones():
    sched = CurveSchedule(100.0, early=(60.0, 30.0, 0.0))
    due = [t for t in range(0, 351, 7) if sched.due(float(t))]
    assert due == [35, 63, 105, 203, 301]  # the first step past 30, 60 (unordered, 0 ignored), then every 100 s
    once = CurveSchedule(100.0, early=(30.0, 60.0))
    assert [once.due(t) for t in (20.0, 130.0, 140.0, 200.0)] == [False, True, False, True]  # a long step: one point
    with pytest.raises(ValueError, match="must be > 0"):
        CurveSchedule(0.0)
