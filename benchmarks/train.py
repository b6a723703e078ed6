"""Training of one avatar on this machine's CPU: quality after a fixed time budget, convergence vs a baseline.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/train.py [--minutes 30] [--size 256]
        [--clip ../shared/data/clips/RD_Radio2_000.mp4] [--baseline-minutes M] [--no-baseline] [--eval-every S]
        [--early 30,60,120] [--set trainer.error_map=0 ...]

What is measured:

* A one-identity dataset is built from the whole clip (200 frames: 181 train, the last 19 held out) with
  :class:`workers.clip.ClipProcessor` (no Ray) and cached in ``--work``.
* The ``cpu`` preset (RAD-NeRF's grid head; ``--set`` overrides its keys, dotted as in ``parley sweep``) trains for
  ``--minutes`` of training wall-clock, split head 70% / lips 5% / torso 25%. Each stage's seconds per step are
  measured first (warm-up steps of a throwaway trainer, plus the amortised occupancy-grid update), and each stage
  gets the steps that fit its share, so that its exponential learning-rate decay completes, but never more than
  the preset's (``--set trainer.head.steps=N`` caps the head at N; a large N lets it fill its share): a run whose
  stages all reach their preset's steps ends before the budget. The head and the torso
  are re-sized from their measured pace as they run, and the later stages to the budget left when the head and the
  lips stages end (a few timed steps are easily skewed by anything else running;
  :meth:`nerf.trainer.Trainer.resize_stage` re-fits the decay).
* A curve every ``--eval-every`` seconds of *training* time (evaluation is off the clock), and for the grid model
  also at the ``--early`` times (30, 60 and 120 s by default: it passes the baseline's best long before the first
  regular point, and a coarse curve only bounds its time to get there), on every 2nd held-out frame: the head
  PSNR (the head rendered over the ground truth's torso and background, the head stage's own target) and, once
  the torso stage has started, the full-image PSNR.
* Final evaluation on all held-out frames: PSNR, SSIM, LPIPS (AlexNet) and LMD (mouth landmark distance,
  MediaPipe, px at the training size); training throughput = head samples / second over the head stage. The
  held-out frames are also split by their rotation from the nearest training view (``view_gap_deg``): those
  within 2 degrees (``psnr_seen_views``) and the new views beyond it (``new_view_frames`` of them).
* Baseline: the same recipe with an AD-NeRF-like implicit MLP head (``backbone="frequency"``), head stage only,
  for ``--baseline-minutes`` (re-sized from its pace as the grid model's head is), with the same head-PSNR
  curve. ``convergence_ratio`` = the time the baseline needed to first reach its best head PSNR P, divided by the
  (linearly interpolated) time the grid model needed to reach P; below 1 when the grid model is slower, 0 when it
  never reaches P.

Writes ``train_benchmark.json`` (curves, metrics, configs, steps, machine) and the grid model's
``checkpoint.pt`` (for ``benchmarks/render.py``) in ``--work``. The last line is ``name=value`` pairs:

    psnr=... lpips=... lmd=... samples_per_s=... head_psnr=... baseline_head_psnr=... convergence_ratio=... minutes=...
    psnr_seen_views=... new_view_frames=...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK, apply_sets, build_dataset, with_steps  # noqa: E402
from jobs.train import landmark_fn, load_identity, lpips_module  # noqa: E402
from nerf.avatar import evaluate  # noqa: E402
from nerf.config import ExperimentConfig, config_to_json  # noqa: E402
from nerf.data import IdentityFrames  # noqa: E402
from nerf.methods import preset  # noqa: E402
from nerf.metrics import LPIPS, psnr  # noqa: E402
from nerf.trainer import StepResult, Trainer  # noqa: E402

SHARES = {"head": 0.70, "lips": 0.05, "torso": 0.25}
"""Share of the training budget of each stage."""
REPORT = "train_benchmark.json"


NEW_VIEW_DEG = 2.0
"""Held-out frames rotated more than this from every training view count as new views in the report."""


def view_split(per_frame: list[dict[str, float]], limit: float = NEW_VIEW_DEG) -> dict[str, dict[str, float]]:
    """Held-out frames split by ``view_gap_deg`` (:func:`nerf.avatar.evaluate`'s per-frame rows): frame count and
    mean PSNR of those within ``limit`` degrees of a training view (``seen_views``) and beyond it (``new_views``)."""
    out = {}
    for name, keep in (("seen_views", lambda g: g <= limit), ("new_views", lambda g: g > limit)):
        rows = [r for r in per_frame if keep(r["view_gap_deg"])]
        out[name] = {"frames": len(rows), "psnr": float(np.mean([r["psnr"] for r in rows])) if rows else math.nan}
    return out


def seconds_per_step(cfg: ExperimentConfig, data: IdentityFrames, stage: str, lips: LPIPS | None,
                     warmup: int = 2, timed: int = 4) -> float:
    """Seconds per step of one stage, measured on a throwaway trainer: the median of ``timed`` steps after
    ``warmup`` steps, plus one occupancy-grid update divided by the update interval (head and lips stages)."""
    n = warmup + timed
    tr = Trainer(with_steps(cfg, *(n if s == stage else 0 for s in ("head", "lips", "torso"))), data,
                 lpips=lips if stage == "lips" else None)
    secs = []
    for _ in range(n):
        t = time.perf_counter()
        r = tr.step()
        secs.append(time.perf_counter() - t)
        assert r is not None and r.stage == stage, (r, stage)
    per_step = float(np.median(secs[warmup:]))
    if stage != "torso":
        k = tr.store.n_train
        t = time.perf_counter()
        tr.model.update_grid(tr.store.audio[:k], tr.store.eye[:k], tr.generator)
        per_step += (time.perf_counter() - t) / cfg.model.grid.update_every
    return per_step


@dataclass
class Run:
    """One training run with its curve."""

    name: str
    config: ExperimentConfig
    curve: list[dict[str, Any]] = field(default_factory=list)
    results: list[StepResult] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)


class CurveSchedule:
    """When curve points are due: every ``every`` seconds of training time, and at each of the ``early`` times."""

    def __init__(self, every: float, early: tuple[float, ...] = ()):
        if every <= 0:
            raise ValueError(f"curve points every {every} s: must be > 0")
        self.every = every
        self._next = every
        self._early = sorted(t for t in early if t > 0)

    def due(self, t: float) -> bool:
        """Whether a point is due at training time ``t`` (once: every time passed by ``t`` counts as taken, so a
        slow step that passes several gives one point)."""
        if t < self._next and not (self._early and t >= self._early[0]):
            return False
        while self._next <= t:
            self._next += self.every
        self._early = [x for x in self._early if x > t]
        return True


def curve_point(trainer: Trainer, frames: list[int], t: float, stage: str, step: int) -> dict[str, Any]:
    """Head PSNR (and full PSNR once the torso stage has started) averaged over ``frames``."""
    head, full = [], []
    torso_started = trainer.stage == "torso" or trainer.done
    for f in frames:
        gt = torch.from_numpy(trainer.data.images[f]).float() / 255.0
        head.append(psnr(trainer.render_frame(f, head_only=True), gt))
        if torso_started and trainer.tc.torso.steps:
            full.append(psnr(trainer.render_frame(f), gt))
    return {"t": t, "stage": stage, "step": step, "global_step": trainer.global_step,
            "head_psnr": float(np.mean(head)), "psnr": float(np.mean(full)) if full else None}


def train_with_curve(run: Run, data: IdentityFrames, lips: LPIPS | None, eval_every: float,
                     replan: Callable[[Trainer, Run, StepResult], None] | None = None,
                     early: tuple[float, ...] = (), pretrained: dict[str, torch.Tensor] | None = None,
                     curve: bool = True) -> Trainer:
    """Train ``run.config`` to the end, adding a curve point at t=0, at each of the ``early`` times (s of training
    time), every ``eval_every`` s of training time, at the end of each stage and at the end.
    ``replan(trainer, run, result)`` is called after every step (a stage's last step comes before the next stage's
    optimiser exists), to resize the stages to a budget; ``pretrained`` goes to the trainer (a learnt audio net).
    ``curve=False`` adds no point (a run whose weights alone matter)."""
    trainer = Trainer(run.config, data, lpips=lips if run.config.trainer.lips.steps else None, pretrained=pretrained)
    frames = [int(f) for f in data.val_ids[::2]]

    def point(stage: str, step: int) -> None:
        if not curve:
            return
        t = time.perf_counter()
        p = curve_point(trainer, frames, run.train_s, stage, step)
        run.eval_s += time.perf_counter() - t
        run.curve.append(p)
        full = f" psnr={p['psnr']:.2f}" if p["psnr"] is not None else ""
        print(f"[{run.name}] t={p['t']:.0f}s stage={stage} step={step} head_psnr={p['head_psnr']:.2f}{full} "
              f"(eval {time.perf_counter() - t:.0f} s)", flush=True)

    point("head", 0)
    schedule = CurveSchedule(eval_every, early)
    while True:
        t = time.perf_counter()
        r = trainer.step()
        dt = time.perf_counter() - t
        if r is None:
            break
        run.train_s += dt
        run.stage_s[r.stage] = run.stage_s.get(r.stage, 0.0) + dt
        run.results.append(r)
        stage_end = r.step >= trainer.stage_config(r.stage).steps
        if schedule.due(run.train_s) or stage_end:
            point(r.stage, r.step)
        if replan is not None:
            replan(trainer, run, r)
    return trainer


def replan_to_budget(per_step: dict[str, float], budget_s: float, shares: dict[str, float],  # noqa: ANN201
                     cap: dict[str, int] | None = None):
    """A ``replan`` for :func:`train_with_curve` that keeps the stages to the budget, none past its ``cap`` steps
    (default: no cap).

    Steps are first sized by the per-step times timed before training, which a few timed steps get wrong easily:
    anything else running at the start doubled the torso's estimate (the run ended 400 s early), anything
    running later slowed the head past its share (the lips and torso were left with nothing). So the head and the
    torso are re-sized from their own recent pace (the steps since the previous re-size) each time their step
    count doubles from 100 on: the head to its share of the budget, the torso, the last stage, to whatever is left.
    At the end of the head stage the lips and torso stages get the budget it left, split by ``shares``; at the
    end of the lips stage the torso gets what is left then."""
    mark: dict[str, tuple[int, float]] = {}  # stage -> (step, stage seconds) at its previous re-size

    def capped(stage: str, n: int) -> int:
        return min(n, cap[stage]) if cap and stage in cap else n

    def resize(trainer: Trainer, run: Run, new: dict[str, int], why: str) -> None:
        for s, n in new.items():
            trainer.resize_stage(s, n)  # type: ignore[arg-type]
        run.config = trainer.config
        print(f"[{run.name}] {why}: " + ", ".join(f"{s} {n} steps" for s, n in new.items())
              + f" for the remaining {max(budget_s - run.train_s, 0.0):.0f} s", flush=True)

    def replan(trainer: Trainer, run: Run, r: StepResult) -> None:
        rest = max(budget_s - run.train_s, 0.0)
        steps = trainer.stage_config(r.stage).steps
        spent = run.stage_s[r.stage]
        if r.step >= steps and r.stage in ("head", "lips"):
            order = ("lips", "torso")
            later = {s: shares[s] for s in order[order.index(r.stage) + 1 if r.stage in order else 0:]
                     if trainer.stage_config(s).steps}
            if later:
                resize(trainer, run, {s: capped(s, max(1, int(rest * later[s] / sum(later.values()) / per_step[s])))
                                      for s in later}, f"{r.stage} stage took {spent:.0f} s")
        elif r.stage in ("head", "torso") and r.step >= 100 and r.step & (r.step - 1) == 0 and r.step < steps:
            step0, spent0 = mark.get(r.stage, (0, 0.0))
            mark[r.stage] = (r.step, spent)
            pace = (spent - spent0) / (r.step - step0)
            left = budget_s * shares["head"] - spent if r.stage == "head" else rest
            new = capped(r.stage, r.step + max(1, int(left / pace)))
            if abs(new - steps) > 0.02 * steps:
                resize(trainer, run, {r.stage: new}, f"{r.stage} at step {r.step} runs {pace:.3f} s/step "
                       f"(timed {per_step[r.stage]:.3f})")

    return replan


def time_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """First training time at which the head PSNR reaches ``target``, linear between curve points; None if never."""
    prev = None
    for p in curve:
        if p["head_psnr"] >= target:
            if prev is None or p["head_psnr"] == prev["head_psnr"]:
                return float(p["t"])
            a = (target - prev["head_psnr"]) / (p["head_psnr"] - prev["head_psnr"])
            return float(prev["t"] + a * (p["t"] - prev["t"]))
        prev = p
    return None


def head_psnr_all(trainer: Trainer) -> float:
    """Head PSNR over all held-out frames."""
    vals = []
    for f in trainer.data.val_ids.tolist():
        gt = torch.from_numpy(trainer.data.images[f]).float() / 255.0
        vals.append(psnr(trainer.render_frame(f, head_only=True), gt))
    return float(np.mean(vals))


def finite(x: Any) -> Any:
    """``x`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def budget_steps(per_step: dict[str, float], seconds: float, shares: dict[str, float],
                 cap: dict[str, int] | None = None) -> dict[str, int]:
    """Steps of each stage so that its share of ``seconds`` fits (at least 1 for a stage with a share), at most
    its ``cap``."""
    fit = {s: max(1, int(seconds * shares[s] / per_step[s])) if shares.get(s) else 0 for s in ("head", "lips", "torso")}
    return {s: min(n, cap[s]) if cap else n for s, n in fit.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="talking-head clip (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="training wall-clock of the grid model, all stages (default: %(default)s)")
    ap.add_argument("--size", type=int, default=256, help="training image side in px (default: %(default)s)")
    ap.add_argument("--baseline-minutes", type=float, default=None,
                    help="training wall-clock of the implicit-MLP baseline, head stage only (default: --minutes)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline (no convergence ratio)")
    ap.add_argument("--eval-every", type=float, default=None,
                    help="seconds of training time between curve points (default: minutes*60/10)")
    ap.add_argument("--early", default="30,60,120", metavar="S,S,...",
                    help="extra curve points of the grid model at these seconds of training time (it passes the "
                         "baseline's best early; default: %(default)s; '' for none)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help="cache of the dataset, the report and the checkpoint (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the cpu preset (dotted, e.g. trainer.error_map=0; repeatable)")
    args = ap.parse_args()
    if args.eval_every is not None and args.eval_every <= 0:
        ap.error(f"--eval-every {args.eval_every:g}: seconds between curve points, > 0")
    base_cfg, _ = apply_sets(preset("cpu"), args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    budget_s = args.minutes * 60.0
    base_s = (args.minutes if args.baseline_minutes is None else args.baseline_minutes) * 60.0
    eval_every = args.eval_every or budget_s / 10.0
    try:
        early = tuple(float(x) for x in args.early.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--early {args.early!r}: a comma-separated list of seconds, e.g. 30,60,120") from None
    args.work.mkdir(parents=True, exist_ok=True)

    root = build_dataset(args.clip, args.work)
    identity = args.clip.stem
    data = load_identity(str(root), identity, args.size)
    print(f"identity {identity}: {data.n_train} train + {len(data.val_ids)} held-out frames at {args.size} px; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
    lips = lpips_module()

    cfg = replace(base_cfg, trainer=replace(base_cfg.trainer, size=args.size))
    per_step = {s: seconds_per_step(cfg, data, s, lips) for s in ("head", "lips", "torso")}
    cap = {s: getattr(cfg.trainer, s).steps for s in ("head", "lips", "torso")}  # the preset's: at most these
    steps = budget_steps(per_step, budget_s, SHARES, cap)
    cfg = with_steps(cfg, steps["head"], steps["lips"], steps["torso"])
    print("grid model: " + ", ".join(f"{s} {per_step[s]:.2f} s/step x {steps[s]} steps" for s in steps), flush=True)

    runs = {"grid": Run("grid", cfg)}
    if not args.no_baseline:
        bcfg = replace(cfg, name="cpu-frequency", model=replace(cfg.model, head=replace(cfg.model.head,
                                                                                        backbone="frequency")))
        b_per_step = seconds_per_step(bcfg, data, "head", None)
        b_steps = max(1, int(base_s / b_per_step))
        runs["baseline"] = Run("baseline", with_steps(bcfg, b_steps, 0, 0))
        print(f"baseline (frequency MLP head): head {b_per_step:.2f} s/step x {b_steps} steps", flush=True)

    trainer = train_with_curve(runs["grid"], data, lips, eval_every, replan_to_budget(per_step, budget_s, SHARES, cap),
                               early)
    steps = {s: trainer.stage_config(s).steps for s in steps}  # as re-planned during training
    ckpt = trainer.save_checkpoint(args.work / CHECKPOINT)
    grid = runs["grid"]
    planned = {s: budget_s * SHARES[s] for s in steps}
    print("grid stages, budget share vs actual training s: "
          + ", ".join(f"{s} {planned[s]:.0f}/{grid.stage_s.get(s, 0.0):.0f}" for s in steps), flush=True)
    last = [s for s in steps if steps[s]][-1]  # it gets whatever the others left: it fills the budget unless capped
    if grid.train_s > 1.05 * budget_s or (steps[last] < cap[last] and grid.train_s < 0.95 * budget_s):
        print(f"warning: trained {grid.train_s:.0f} s for a {budget_s:.0f} s budget: the step timings varied "
              "(is the machine busy?); figures are for the steps in the report", flush=True)
    elif grid.train_s < 0.95 * budget_s:
        print(f"the {last} stage ran the preset's {cap[last]} steps: {grid.train_s:.0f} s of the {budget_s:.0f} s "
              "budget", flush=True)
    head_results = [r for r in grid.results if r.stage == "head"]
    samples_per_s = sum(r.samples for r in head_results) / max(sum(r.seconds for r in head_results), 1e-9)

    t = time.perf_counter()
    detect_pred, detect_gt, close = landmark_fn()
    try:
        final_res = evaluate(trainer, lpips=lips, landmarks=(detect_pred, detect_gt))
    finally:
        close()
    final = final_res.metrics
    head_psnr = head_psnr_all(trainer)
    print(f"final evaluation ({int(final['n_frames'])} held-out frames, {time.perf_counter() - t:.0f} s): "
          f"PSNR {final['psnr']:.2f} dB, SSIM {final['ssim']:.4f}, LPIPS {final['lpips']:.4f}, "
          f"LMD {final['lmd']:.3f} px ({int(final['lmd_frames'])} frames), head PSNR {head_psnr:.2f} dB; "
          f"{samples_per_s / 1e6:.3f} M samples/s",
          flush=True)
    views = view_split(final_res.per_frame)
    print("held-out frames by their rotation from the nearest training view: "
          + "; ".join(f"{k} {v['frames']} frames, PSNR {v['psnr']:.2f} dB" for k, v in views.items() if v["frames"]),
          flush=True)
    del trainer

    baseline: dict[str, Any] | None = None
    ratio = math.nan
    if "baseline" in runs:
        b = runs["baseline"]
        # re-sized from its own pace too: the steps timed before it are as easily skewed as the grid model's
        # (a run timed at 1.63 s/step ran at 1.3 and stopped after 481 of its 600 s)
        btrainer = train_with_curve(b, data, None, eval_every,
                                    replan_to_budget({"head": b_per_step}, base_s, {"head": 1.0}))
        b_head = head_psnr_all(btrainer)
        del btrainer
        target = max(p["head_psnr"] for p in b.curve)
        t_base = time_to_reach(b.curve, target)
        t_grid = time_to_reach(grid.curve, target)
        if t_grid is None:
            ratio = 0.0  # the grid model never reached the baseline's best head PSNR
        elif t_grid > 0:
            ratio = (t_base or 0.0) / t_grid
        else:
            ratio = math.inf if t_base else 1.0
        b_res = b.results
        baseline = {"config": json.loads(config_to_json(b.config)), "steps": b.config.trainer.head.steps,
                    "seconds_per_step": b_per_step, "train_s": b.train_s, "eval_s": b.eval_s, "curve": b.curve,
                    "head_psnr": b_head, "best_curve_head_psnr": target, "t_reach_best": t_base,
                    "grid_t_reach": t_grid,
                    "samples_per_s": sum(r.samples for r in b_res) / max(sum(r.seconds for r in b_res), 1e-9)}
        print("\nhead PSNR curves (dB, every 2nd held-out frame; t = training seconds)")
        print(f"{'grid t':>8} {'stage':>6} {'head':>7} {'full':>7} | {'base t':>8} {'head':>7}")
        for k in range(max(len(grid.curve), len(b.curve))):
            g = grid.curve[k] if k < len(grid.curve) else None
            p = b.curve[k] if k < len(b.curve) else None
            left = (f"{g['t']:8.0f} {g['stage']:>6} {g['head_psnr']:7.2f} "
                    f"{g['psnr'] if g['psnr'] is not None else math.nan:7.2f}") if g else " " * 30
            right = f"{p['t']:8.0f} {p['head_psnr']:7.2f}" if p else ""
            print(f"{left} | {right}")
        reach = f"{t_grid:.0f} s" if t_grid is not None else "never"
        print(f"baseline best head PSNR {target:.2f} dB first at {t_base:.0f} s; the grid model reached it at {reach}: "
              f"convergence ratio {ratio:.2f}; baseline final head PSNR {b_head:.2f} dB (all held-out frames)",
              flush=True)

    report = {
        "clip": str(args.clip), "identity": identity, "size": args.size, "minutes": args.minutes,
        "n_train": data.n_train, "n_val": int(len(data.val_ids)), "eval_every_s": eval_every, "early_s": list(early),
        "machine": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "grid": {"config": json.loads(config_to_json(runs["grid"].config)), "steps": steps,
                 "seconds_per_step": per_step,
                 "planned_s": planned, "stage_s": grid.stage_s, "train_s": grid.train_s, "eval_s": grid.eval_s,
                 "curve": grid.curve, "final": final, "final_per_frame": final_res.per_frame, "views": views,
                 "head_psnr": head_psnr, "samples_per_s": samples_per_s,
                 "checkpoint": str(ckpt)},
        "baseline": baseline, "convergence_ratio": ratio,
    }
    out = args.work / REPORT
    out.write_text(json.dumps(finite(report), indent=2, allow_nan=False, default=float))
    print(f"grid: trained {grid.train_s:.0f} s ({', '.join(f'{s} {v:.0f} s' for s, v in grid.stage_s.items())}), "
          f"curve evaluation {grid.eval_s:.0f} s -> {out}, {ckpt}")
    b_head = baseline["head_psnr"] if baseline else math.nan
    print(f"psnr={final['psnr']:.2f} lpips={final['lpips']:.4f} lmd={final['lmd']:.3f} "
          f"samples_per_s={samples_per_s:.0f} head_psnr={head_psnr:.2f} baseline_head_psnr={b_head:.2f} "
          f"convergence_ratio={ratio:.3f} minutes={args.minutes:g} psnr_seen_views={views['seen_views']['psnr']:.2f} "
          f"new_view_frames={views['new_views']['frames']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
