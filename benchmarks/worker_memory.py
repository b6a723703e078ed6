"""Peak memory of one dataset-build worker per clip length.

Makes clips of the given lengths by looping a shared clip (stream copy, no re-encode), then builds each
one in a fresh process exactly as a build worker does (:class:`pipelines.build_worker.ClipBuildWorker`: extract,
write the clip's Parquet files and its row into a scratch dataset) and records that process's peak RSS
(ffmpeg's decoder subprocesses not counted). The worker's models load before the clip, so the figure is
what a worker reserving ``--memory-per-worker-gb`` has to hold.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/worker_memory.py [--lengths 8,120,600] \
        [--clip ../shared/data/clips/RD_Radio2_000.mp4] [--runs 1]

Last line: ``peak_mb_<seconds>s=<MB>`` per length (median over ``--runs``), and ``frames_<seconds>s=<n>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = ROOT.parent / "shared" / "data" / "clips" / "RD_Radio2_000.mp4"


def looped_clip(src: Path, seconds: float, out: Path) -> Path:
    """``src`` looped to at least ``seconds`` and cut there (stream copy: seconds of work for any length)."""
    from workers.media import probe

    loops = max(0, math.ceil(seconds / probe(src).duration_s) - 1)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(src), "-t", str(seconds),
                    "-c", "copy", str(out)], check=True)
    return out


def build_once(clip: str, dataset: str) -> None:
    """The child: one worker, one clip; prints a JSON line with its peak RSS and the clip's status."""
    from pipelines.build_worker import ClipBuildWorker
    from pipelines.inputs import ClipSpec
    from pipelines.storage import S3Options, Storage
    from workers.config import ClipConfig

    worker = ClipBuildWorker(Storage(dataset), ClipConfig(), S3Options(), threads=1)
    t = time.perf_counter()
    row = worker.build_one(ClipSpec(clip, Path(clip).stem))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "status": row["status"], "error": row.get("error"),
                      "frames": row.get("n_frames"), "seconds": time.perf_counter() - t}), flush=True)
    os._exit(0)  # skip MediaPipe's finalisers: only the figure matters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8,120,600", help="clip lengths in seconds, comma-separated")
    parser.add_argument("--clip", default=str(DEFAULT_CLIP), help="clip to loop")
    parser.add_argument("--runs", type=int, default=1, help="builds per length (median reported)")
    parser.add_argument("--child", nargs=2, metavar=("CLIP", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build_once(*args.child)
        return 0
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="parley-wmem-") as tmp:
        for seconds in [float(s) for s in args.lengths.split(",") if s]:
            tag = f"{seconds:g}s"
            clip = looped_clip(Path(args.clip), seconds, Path(tmp) / f"clip_{tag}.mp4")
            peaks = []
            for r in range(args.runs):
                out = subprocess.run([sys.executable, __file__, "--child", str(clip), f"{tmp}/ds_{tag}_{r}"],
                                     capture_output=True, text=True, cwd=ROOT)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if out.returncode != 0 or not lines:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"the build of the {tag} clip failed (exit {out.returncode})")
                res = json.loads(lines[-1])
                if res["status"] != "ok":
                    raise SystemExit(f"the {tag} clip failed: {res['error']}")
                print(f"{tag}: {res['frames']} frames in {res['seconds']:.0f} s, peak RSS {res['peak_mb']:.0f} MB",
                      flush=True)
                peaks.append(res["peak_mb"])
                figures[f"frames_{tag}"] = res["frames"]
            figures[f"peak_mb_{tag}"] = statistics.median(peaks)
    print(" ".join(f"{k}={v:.0f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
