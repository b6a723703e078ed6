"""Per-clip extraction speed and memory on ONE CPU core.

Pins the process to one core (torch / OpenCV threads = 1; MediaPipe's threads share that core),
loads the models once, runs the full extraction of CLIP ``--runs`` times after one warm-up run,
and prints the per-stage breakdown and, last line, ``frames_per_s_per_core=<x> peak_rss_mb=<y>``
(median over runs; peak RSS of this process; the ffmpeg decoder subprocesses are not counted).

    PARLEY_ASSETS=../shared/assets python benchmarks/preprocess.py ../shared/data/clips/RD_Radio2_000.mp4
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--backend", choices=["mediapipe", "fan"], default="mediapipe")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to")
    parser.add_argument("--max-people", type=int, default=None, help="people kept per clip (default: the build's)")
    args = parser.parse_args()

    os.sched_setaffinity(0, {args.core})
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from workers.clip import ClipConfig, ClipProcessor

    t = time.perf_counter()
    cfg = ClipConfig(backend=args.backend)
    processor = ClipProcessor(cfg if args.max_people is None else ClipConfig(backend=args.backend,
                                                                             max_people=args.max_people))
    load_s = time.perf_counter() - t
    stages = ["probe_s", "audio_decode_s", "landmarks_s", "audio_features_s", "speakers_s", "fit_s", "parse_encode_s"]
    try:
        t = time.perf_counter()
        processor(args.clip)  # warm-up: first-call costs (JIT, lazy imports, allocator)
        warm_s = time.perf_counter() - t
        runs = []
        for _ in range(args.runs):
            t = time.perf_counter()
            res = processor(args.clip)
            runs.append((time.perf_counter() - t, res.summary))
    finally:
        processor.close()
    n = runs[0][1]["n_frames"]
    walls = [w for w, _ in runs]
    fps = [n / w for w in walls]
    print(f"clip={args.clip} backend={args.backend} frames={n} size={runs[0][1]['width']}x{runs[0][1]['height']}")
    print(f"model load {load_s:.2f} s, warm-up run {warm_s:.2f} s ({n / warm_s:.1f} frames/s)")
    print("stage               median ms/frame   share")
    total = statistics.median(walls)
    for k in stages:
        v = statistics.median(s[k] for _, s in runs)
        print(f"{k[:-2]:<20}{1000 * v / n:>10.2f}      {100 * v / total:5.1f}%")
    print(f"runs (s): {', '.join(f'{w:.2f}' for w in walls)}")
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"frames_per_s_per_core={statistics.median(fps):.1f} peak_rss_mb={self_mb:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
