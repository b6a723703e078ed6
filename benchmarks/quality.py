"""Quality figures of the per-clip extraction on real clips (not a test; prints what the tests bound).

For each clip: face detection rate, median landmark reprojection error (px and % of face width),
eye-ratio vs MediaPipe blink-score correlation and the deepest blink, and mouth opening vs audio
RMS correlation (both smoothed over 0.2 s) at lag 0 and at the best lag within +-8 frames.
Last line: medians over clips.

    PARLEY_ASSETS=../shared/assets python benchmarks/quality.py ../shared/data/clips/*.mp4
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="+")
    args = parser.parse_args()
    from pipelines.qc import best_lag_correlation
    from pipelines.schema import array
    from workers.clip import ClipProcessor

    def smooth(x: np.ndarray) -> np.ndarray:
        return np.convolve(x, np.ones(5) / 5, mode="same")

    processor = ClipProcessor()
    figures = []
    try:
        for path in args.clips:
            rows = processor(path).rows
            faces = [r for r in rows if r["face_found"]]
            err = np.array([r["reprojection_error"] for r in faces])
            width = float(np.median([np.ptp(array(r, "landmarks_2d")[:, 0]) for r in faces]))
            eye = np.array([r["eye_ratio"] for r in faces])
            blink = np.array([(r["blendshapes"][9] + r["blendshapes"][10]) / 2 for r in faces])
            mouth = smooth(np.array([r["mouth_opening"] or 0.0 for r in rows]))
            rms = smooth(np.array([r["rms"] for r in rows]))
            lag0 = float(np.corrcoef(mouth, rms)[0, 1])
            best, lag = best_lag_correlation(mouth, rms, 8)
            f = {
                "face_rate": len(faces) / len(rows),
                "reproj_px": float(np.median(err)),
                "reproj_pct": 100 * float(np.median(err)) / width,
                "eye_blink_corr": float(np.corrcoef(eye, blink)[0, 1]),
                "eye_min_over_median": float(eye.min() / np.median(eye)),
                "mouth_rms_corr_lag0": lag0,
                "mouth_rms_corr_best": best,
                "best_lag_frames": lag,
            }
            figures.append(f)
            print(path, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items()))
    finally:
        processor.close()
    keys = [k for k in figures[0] if k != "best_lag_frames"]
    print(" ".join(f"{k}={statistics.median(f[k] for f in figures):.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
