"""Per-identity fan-out on this machine: N identities x a preset with 1 vs 2 concurrent trials.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/fanout.py [--identities 3] [--preset debug]
        [--steps-scale 10] [--frames 60] [--repeats 3]

What is measured, on a local Ray cluster of ``--cpus`` CPUs (one CPU and one torch thread per trial), MLflow in
a SQLite store in ``--work`` and Tune storage there too:

* ``wall_1`` / ``wall_2``: seconds of :func:`jobs.fanout.run_fanout` with at most 1 / 2 trials at a time
  (inputs checked, experiment created, all trials trained + evaluated + logged, models registered).
* ``trial_s``: each trial's own seconds inside the trainable (imports, data, training, evaluation, MLflow).
* ``overhead_pct``: the scheduling overhead per trial. With one trial at a time, each trial's slot is handed to
  the next trial by Tune; ``gap_s``, the mean seconds between one trial's end and the next one's start (result
  and checkpoint handling, the actor's reset, the next trial's launch; wall-clock stamps taken by the
  trainable), as a percentage of the mean ``trial_s``.
* ``start_s`` / ``stop_s``: the fixed cost of ``Tuner.fit`` once per job: from its call to the first trial's
  start (controller, experiment directory, first actor) and from the last trial's end to its return.
* ``fit_overhead_pct``: ``(fit_s - sum(trial_s)) / N`` as a percentage of the mean ``trial_s`` (the gaps plus the
  fixed start and stop, spread over the N trials); ``job_overhead_pct``: the same with the whole job's wall
  time (adds the input and tracking checks before Tune starts, ``setup_s``, and the registration of the best
  run per identity, ``register_s``).
* ``speedup``: ``wall_1 / wall_2``.

Medians over ``--repeats`` runs of each. The last line is ``name=value`` pairs:

    speedup=... overhead_pct=... gap_s=... start_s=... stop_s=... fit_overhead_pct=... job_overhead_pct=...
    wall_1=... wall_2=... trial_s=... setup_s=... register_s=... identities=... preset=... steps_scale=...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))

import numpy as np  # noqa: E402

from jobs.fanout import run_fanout  # noqa: E402
from jobs.fanout_config import FanoutJob  # noqa: E402


def build_dataset(work: Path, n: int, frames: int) -> Path:
    """``n`` identities, each the first ``frames`` frames of a shared clip (clips reused under new names when
    ``n`` exceeds them), built once with :class:`workers.clip.ClipProcessor` and cached."""
    from pipelines import dataset as D
    from pipelines.commit import write_clip
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for

    root = work / f"dataset_{n}x{frames}"
    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    clips = sorted((SHARED / "data" / "clips").glob("*.mp4"))
    st = Storage(root)
    p = ClipProcessor(ClipConfig(max_frames=frames))
    try:
        for k in range(n):
            clip = clips[k % len(clips)]
            ident = clip.stem if k < len(clips) else f"{clip.stem}_{k}"
            res = p(str(clip), identity=ident, clip_id=clip_id_for(f"{clip.resolve()}#{k}"))
            write_clip(st, res, identity=ident)
    finally:
        p.close()
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    (root / ".complete").write_text("ok")
    return root


def gaps(spans: list[tuple[float, float]]) -> list[float]:
    """Seconds between each trial's end and the next trial's start, trials in start order."""
    return [round(b[0] - a[1], 2) for a, b in zip(spans, spans[1:], strict=False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=3, help="identities (default: %(default)s)")
    ap.add_argument("--preset", default="debug", help="training preset (default: %(default)s)")
    ap.add_argument("--steps-scale", type=float, default=10.0,
                    help="multiply every stage's steps (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=60, help="frames per identity (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each concurrency (default: %(default)s)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/parley_bench_fanout"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(args.work, args.identities, args.frames)

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for rep in range(args.repeats):
            for conc in (1, 2):
                name = f"c{conc}-r{rep}-{int(time.time())}"
                job = FanoutJob(dataset=str(dataset), preset=args.preset, steps_scale=args.steps_scale,
                                tracking_uri=f"sqlite:///{args.work / 'mlflow.db'}", experiment=f"bench-{name}",
                                storage=str(args.work / "tune"), work_root=str(args.work / "scratch"), name=name,
                                cpus_per_trial=1.0, max_concurrent=conc, max_failures=0)
                t = time.perf_counter()
                out = run_fanout(job)
                wall = time.perf_counter() - t
                bad = [tr for tr in out["trials"] if tr["status"] != "done"]
                if bad:
                    raise SystemExit(f"trials failed: {bad}")
                trial_s = [tr["metrics"]["trial_seconds"] for tr in out["trials"]]
                spans = sorted((tr["metrics"]["trial_start_time"], tr["metrics"]["trial_end_time"])
                               for tr in out["trials"])
                runs[conc].append({"wall": wall, "trial_s": trial_s, "spans": spans, **out["timings"]})
                tm = out["timings"]
                print(f"run {rep} concurrency {conc}: wall {wall:.1f} s (setup {tm['setup_s']:.1f}, fit "
                      f"{tm['fit_s']:.1f}, register {tm['register_s']:.1f}), trials "
                      + ", ".join(f"{x:.1f}" for x in trial_s) + " s" + (f", gaps {gaps(spans)}" if conc == 1 else ""),
                      flush=True)
    finally:
        ray.shutdown()

    wall_1 = float(np.median([r["wall"] for r in runs[1]]))
    wall_2 = float(np.median([r["wall"] for r in runs[2]]))
    n = args.identities

    def pct(r: dict, total: str) -> float:
        return (r[total] - sum(r["trial_s"])) / n / float(np.mean(r["trial_s"])) * 100

    # one trial at a time: the slot's hand-over between trials, and the fixed start and stop of Tuner.fit
    gap_runs = [float(np.mean(gaps(r["spans"]))) for r in runs[1]]
    gap_s = float(np.median(gap_runs))
    overheads = [g / float(np.mean(r["trial_s"])) * 100 for g, r in zip(gap_runs, runs[1], strict=True)]
    overhead_pct = float(np.median(overheads))
    start_s = float(np.median([r["spans"][0][0] - r["fit_start_time"] for r in runs[1]]))
    stop_s = float(np.median([r["fit_end_time"] - r["spans"][-1][1] for r in runs[1]]))
    fit_overhead_pct = float(np.median([pct(r, "fit_s") for r in runs[1]]))
    job_overhead_pct = float(np.median([pct(r, "wall") for r in runs[1]]))
    setup_s = float(np.median([r["setup_s"] for r in runs[1] + runs[2]]))
    register_s = float(np.median([r["register_s"] for r in runs[1] + runs[2]]))
    trial_s = float(np.median([x for r in runs[1] for x in r["trial_s"]]))
    report = {"runs": runs, "wall_1": wall_1, "wall_2": wall_2, "speedup": wall_1 / wall_2,
              "overhead_pct": overhead_pct, "overheads_pct": overheads, "gap_s": gap_s, "start_s": start_s,
              "stop_s": stop_s, "fit_overhead_pct": fit_overhead_pct, "job_overhead_pct": job_overhead_pct,
              "setup_s": setup_s, "register_s": register_s, "trial_s": trial_s, "args": vars(args)}
    (args.work / "fanout_benchmark.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"speedup={wall_1 / wall_2:.2f} overhead_pct={overhead_pct:.1f} gap_s={gap_s:.2f} start_s={start_s:.1f} "
          f"stop_s={stop_s:.1f} fit_overhead_pct={fit_overhead_pct:.1f} job_overhead_pct={job_overhead_pct:.1f} "
          f"wall_1={wall_1:.1f} wall_2={wall_2:.1f} trial_s={trial_s:.1f} setup_s={setup_s:.1f} "
          f"register_s={register_s:.1f} identities={n} preset={args.preset} steps_scale={args.steps_scale:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
