"""Dataset build throughput on Ray: 1 worker vs 2 workers, the cost of a no-op re-run, worker memory.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/build.py [--copies 4] [--runs 3]

Builds ``copies`` hard-linked copies of each shared clip (distinct names, so distinct clips) on a
local Ray cluster of this machine's CPUs: once with 1 worker, once with 2 (1 CPU each, fresh
outputs), then re-runs the 2-worker build (nothing to do) in-process and through the CLI.
Ray's own start-up is excluded (it is paid once per cluster); worker start-up and model loading
are included. Figures are medians over ``runs``; the last line is ``name=value`` pairs:

    frames_per_s_1=... frames_per_s_2=... speedup=... noop_pct=... noop_cli_pct=... peak_worker_mb=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.build import build  # noqa: E402
from pipelines.build_config import BuildConfig, Resources  # noqa: E402
from pipelines.dataset import Dataset  # noqa: E402
from workers.config import ClipConfig  # noqa: E402


def make_inputs(clips: list[Path], copies: int, where: Path) -> Path:
    d = where / "inputs"
    d.mkdir(parents=True)
    for k in range(copies):
        for c in clips:
            dst = d / f"{c.stem}_copy{k}{c.suffix}"
            try:
                os.link(c, dst)
            except OSError:
                shutil.copy(c, dst)
    return d


def one_run(inputs: Path, where: Path, clip: ClipConfig, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for workers in (1, 2):
        dest = where / f"ds_{run}_{workers}"
        cfg = BuildConfig(inputs=[str(inputs)], output=str(dest), clip=clip, qc=False,
                          resources=Resources(num_workers=workers, cpus_per_worker=1.0, memory_per_worker_gb=1.0))
        t = time.perf_counter()
        report = build(cfg)
        seconds = time.perf_counter() - t
        assert not report.failed, report.failed
        out[f"seconds_{workers}"] = seconds
        out[f"frames_per_s_{workers}"] = report.frames / seconds
        rss = Dataset(str(dest)).clips_table(["worker_peak_rss_mb"]).column("worker_peak_rss_mb").to_pylist()
        out[f"peak_worker_mb_{workers}"] = max(rss)
        print(f"run {run}: {workers} worker(s): {len(report.built)} clips, {report.frames} frames in {seconds:.1f} s "
              f"= {report.frames / seconds:.1f} frames/s; peak worker RSS {max(rss):.0f} MB", flush=True)
    t = time.perf_counter()
    noop = build(replace(cfg))
    out["noop_s"] = time.perf_counter() - t
    assert not noop.built
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    max_frames = [] if clip.max_frames is None else ["--max-frames", str(clip.max_frames)]
    subprocess.run([sys.executable, "-m", "jobs.cli", "build-dataset", "-i", str(inputs), "-o", str(dest), "--no-qc",
                    *max_frames], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    out["noop_cli_s"] = time.perf_counter() - t
    out["speedup"] = out["seconds_1"] / out["seconds_2"]
    print(f"run {run}: speed-up {out['speedup']:.2f}x; no-op re-run {out['noop_s']:.2f} s in-process, "
          f"{out['noop_cli_s']:.1f} s as a CLI process", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="*", type=Path,
                    default=sorted((ROOT.parent / "shared" / "data" / "clips").glob("*.mp4")))
    ap.add_argument("--copies", type=int, default=4, help="copies of each clip (N)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=None, help="cut clips (quick checks)")
    args = ap.parse_args()
    import ray

    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray start-up {time.perf_counter() - t:.1f} s; CPUs {ray.cluster_resources().get('CPU')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        where = Path(tmp)
        inputs = make_inputs(args.clips, args.copies, where)
        runs = [one_run(inputs, where, ClipConfig(max_frames=args.max_frames), r) for r in range(args.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    build_s = med["seconds_2"]
    print(f"clips={len(args.clips) * args.copies} runs={args.runs} (medians) build_1_s={med['seconds_1']:.1f} "
          f"build_2_s={build_s:.1f} noop_s={med['noop_s']:.2f} noop_cli_s={med['noop_cli_s']:.1f}")
    print(f"frames_per_s_1={med['frames_per_s_1']:.1f} frames_per_s_2={med['frames_per_s_2']:.1f} "
          f"speedup={med['speedup']:.2f} noop_pct={100 * med['noop_s'] / build_s:.1f} "
          f"noop_cli_pct={100 * med['noop_cli_s'] / build_s:.1f} "
          f"peak_worker_mb={max(med['peak_worker_mb_1'], med['peak_worker_mb_2']):.0f}")


if __name__ == "__main__":
    main()
