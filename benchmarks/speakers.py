"""Active-speaker detection on constructed conversations with known truth (and the hand-labelled video call).

Every pair of the clips given (default: the three shared 512 px clips) becomes a side-by-side conversation whose
audio alternates between the two people every 2-3 s while both keep moving their mouths
(:mod:`benchmarks.conversations`); the real clip worker (:class:`workers.clip.ClipProcessor`: landmarks, VAD,
detector) builds it, and its rows' speakers are compared with the truth, leaving out 0.2 s around each switch.
The detector's time is its share of the whole per-frame extraction. ``--seeds`` builds each pair with that many
segment layouts.

    PARLEY_ASSETS=../shared/assets python benchmarks/speakers.py [CLIP ...] [--seeds 2]

Last line: ``frame_accuracy=<x> segment_f1=<x> added_ms_per_frame=<x>`` (frame accuracy and F1 over all
constructed conversations; ms per frame of the detector), after ``real_frame_accuracy`` of the video call.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED  # noqa: E402
from benchmarks.conversations import construct, frame_accuracy, segment_f1  # noqa: E402

CALL = SHARED / "data" / "conversation" / "video_call_interview.mp4"
CALL_LABELS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "video_call_interview.roles.csv"


def speakers_of(result) -> np.ndarray:
    """Per frame, the person whose row says ``speaking`` (-1 nobody) from a :class:`ClipResult`."""
    n = result.summary["n_frames"]
    out = np.full(n, -1, np.int64)
    for r in result.rows:
        if r["speaking"]:
            out[r["frame_index"]] = r["person"]
    return out


def labels_from_csv(path: Path, n: int, fps: float = 25.0, people: int = 2) -> np.ndarray:
    """Per-frame truth from a roles CSV (``start_s,end_s,speaker`` with speaker ``p<k>`` or ``none``), read as the
    build reads hand-checked roles (:func:`workers.speakers.override_frames`)."""
    import csv

    from workers.speakers import RoleOverride, override_frames

    out = np.full(n, -1, np.int64)
    names = [f"p{k}" for k in range(people)]
    with open(path) as f:
        for row in csv.DictReader(f):
            o = RoleOverride(float(row["start_s"]), float(row["end_s"]), row["speaker"].strip())
            a, b, who = override_frames(o, names, fps)
            out[a:b] = who
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path)
    parser.add_argument("--seeds", type=int, default=1, help="segment layouts per pair")
    parser.add_argument("--max-s", type=float, default=None, help="cut each conversation to this length (s)")
    args = parser.parse_args()
    clips = args.clips or sorted((SHARED / "data" / "clips").glob("*.mp4"))

    from workers.clip import ClipConfig, ClipProcessor
    from workers.morphable import FitConfig

    # The whole pipeline runs; the fit and crops are cut down (they do not touch the speaker decision) so a pair
    # takes seconds, and the detector's share is taken against the full default extraction's per-frame time.
    processor = ClipProcessor(ClipConfig(crop_size=128, fit=FitConfig(joint_iters=20, search_iters=10)))
    processor.voice(np.zeros(16000, np.float32), 25, 25.0)  # load the VAD model once, outside the timings
    accs, f1s, ms = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for (a, b), seed in itertools.product(itertools.combinations(clips, 2), range(args.seeds)):
                conv = construct(a, b, Path(tmp) / f"{a.stem}__{b.stem}_{seed}.mp4", seed=seed, max_s=args.max_s)
                res = processor(conv.path, identity="conv")
                pred = speakers_of(res)
                accs.append(frame_accuracy(pred, conv.truth))
                f1s.append(segment_f1(pred, conv.truth))
                ms.append(1000 * res.summary["speakers_s"] / res.summary["n_frames"])
                print(f"{a.stem} | {b.stem} seed {seed}: frames={len(pred)} switches={len(conv.switches)} "
                      f"accuracy={accs[-1]:.3f} segment_f1={f1s[-1]:.3f} detector={ms[-1]:.2f} ms/frame "
                      f"(landmarks {1000 * res.summary['landmarks_s'] / res.summary['n_frames']:.1f} ms/frame)",
                      flush=True)
            real = processor(CALL, identity="call")
            real_acc = frame_accuracy(speakers_of(real), labels_from_csv(CALL_LABELS, real.summary["n_frames"]))
            print(f"{CALL.name} (hand labels {CALL_LABELS.name}): frame accuracy {real_acc:.3f}")
    finally:
        processor.close()
    print(f"conversations={len(accs)} frame_accuracy_min={min(accs):.3f} segment_f1_min={min(f1s):.3f} "
          f"real_frame_accuracy={real_acc:.3f}")
    print(f"frame_accuracy={statistics.mean(accs):.3f} segment_f1={statistics.mean(f1s):.3f} "
          f"added_ms_per_frame={statistics.median(ms):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
