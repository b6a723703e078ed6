"""Peak memory of training one identity, by its number of frames.

Loops a shared clip to the longest length asked for (stream copy), builds it once into a one-identity dataset
(cached in ``--work``), then for each frame count trains the ``cpu`` preset for a few steps in a fresh process on
the first N frames (``max_frames``) and records that process's peak RSS: reading the identity, decoding its
images at the training size, the model and a few steps.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/train_memory.py [--frames 200,2000] [--steps 5]

Last line: ``peak_mb_<N>=<MB>`` per frame count, and ``mb_per_frame=<x>`` (the slope between the first and last).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DEFAULT_CLIP, build_dataset, with_steps  # noqa: E402


def train_once(dataset: str, identity: str, frames: int, steps: int) -> None:
    """The child: load N frames of the identity, train ``steps`` head steps; print peak RSS as JSON."""
    from dataclasses import replace

    from jobs.train import load_identity
    from nerf.methods import preset
    from nerf.trainer import Trainer

    cfg = preset("cpu")
    cfg = with_steps(replace(cfg, trainer=replace(cfg.trainer, max_frames=frames)), steps, 0, 0)
    t = time.perf_counter()
    data = load_identity(dataset, identity, cfg.trainer.size, max_frames=frames)
    load_s = time.perf_counter() - t
    load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer = Trainer(cfg, data)
    for _ in range(steps):
        trainer.step()
    print(json.dumps({"frames": data.n_frames, "load_s": load_s, "load_peak_mb": load_mb,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="200,2000", help="frame counts, comma-separated")
    parser.add_argument("--steps", type=int, default=5, help="training steps after loading")
    parser.add_argument("--clip", default=str(DEFAULT_CLIP))
    parser.add_argument("--work", default="/tmp/parley_bench_train_memory")
    parser.add_argument("--child", nargs=3, metavar=("DATASET", "IDENTITY", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train_once(args.child[0], args.child[1], int(args.child[2]), args.steps)
        os._exit(0)
    counts = [int(n) for n in args.frames.split(",") if n]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from workers.media import probe

    clip = Path(args.clip)
    seconds = max(counts) / 25.0 + 1.0
    loops = max(0, math.ceil(seconds / probe(clip).duration_s) - 1)
    looped = work / f"{clip.stem}_x{loops + 1}.mp4"
    if not looped.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(clip), "-c", "copy",
                        str(looped)], check=True)
    root = build_dataset(looped, work)
    figures: dict[str, float] = {}
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", str(root),
                              looped.stem, str(n)], capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"training on {n} frames failed (exit {out.returncode})")
        res = json.loads(lines[-1])
        print(f"{res['frames']} frames: loaded in {res['load_s']:.1f} s (peak {res['load_peak_mb']:.0f} MB), "
              f"peak after {args.steps} steps {res['peak_mb']:.0f} MB", flush=True)
        figures[f"peak_mb_{n}"] = res["peak_mb"]
    if len(counts) > 1:
        lo, hi = min(counts), max(counts)
        figures["mb_per_frame"] = (figures[f"peak_mb_{hi}"] - figures[f"peak_mb_{lo}"]) / (hi - lo)
    print(" ".join(f"{k}={v:.3g}" if k == "mb_per_frame" else f"{k}={v:.0f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
