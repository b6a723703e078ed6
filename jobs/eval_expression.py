"""JEAN's expression metrics (its Table 1, with our substitutes named; docs/evaluation.md):

* **Exp-Diff**: MSE of the 3DMM expression of a render against its expression source's. JEAN fits Deep3DFaceRecon;
  we fit the dataset's own model (the ICT face model through :class:`workers.clip.ClipProcessor`, the same fit that
  made the dataset's ``expression`` column) to both. Split into the mouth and jaw coefficients and the rest
  (``upper``: brows, eyes, cheeks, nose), since a cross-driven render should follow the audio with the first and the
  expression source with the second.
* **PSNR / SSIM / LPIPS on face crops**: the expression source's face rectangle (the dataset's ``face_rect``, a
  little wider), cropped alike from render and source. JEAN crops with 3DDFA V2's box.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.schema import N_EXPRESSION

MOUTH_PREFIXES = ("jaw", "mouth")
"""ICT expression coefficients of the mouth and jaw (the rest is ``upper``)."""
CROP_MARGIN = 0.1
"""The face crop is the face rectangle widened by this share of its side on each side."""


def coefficient_groups(names: list[str]) -> dict[str, np.ndarray]:
    """Indices of ``all``, ``mouth`` and ``upper`` coefficients of the face model's expression names."""
    mouth = np.asarray([k for k, n in enumerate(names) if n.startswith(MOUTH_PREFIXES)], np.int64)
    upper = np.asarray([k for k, n in enumerate(names) if not n.startswith(MOUTH_PREFIXES)], np.int64)
    return {"all": np.arange(len(names)), "mouth": mouth, "upper": upper}


def fit_expressions(frames: list[np.ndarray], fps: float = 25.0) -> np.ndarray:
    """The 3DMM expression of each RGB frame (uint8 [S, S, 3], one sequence of one face), fitted as a dataset build
    fits a clip: float32 [N, E], NaN rows where no face was found.

    A sequence without a face in any frame (a render still blurred to no face) gives all NaN rows.
    """
    from workers.clip import ClipConfig, ClipProcessor
    from workers.errors import ClipError
    from workers.video_writer import VideoWriter

    n = len(frames)
    with tempfile.TemporaryDirectory(prefix="parley-expdiff-") as tmp:
        path = Path(tmp) / "frames.mp4"
        h, w = frames[0].shape[:2]
        with VideoWriter(path, fps=fps, size=(w, h)) as video:
            for f in frames:
                video.write(f)
        proc = ClipProcessor(ClipConfig(max_people=1))
        try:
            res = proc(str(path), identity="render")
        except ClipError as exc:
            if "no face" not in exc.reason:
                raise
            return np.full((n, N_EXPRESSION), np.nan, np.float32)
        finally:
            proc.close()
    out = np.full((n, N_EXPRESSION), np.nan, np.float32)
    for r in res.rows:
        k = int(r["frame_index"])
        if k < n and r.get("face_found") and r.get("expression") is not None:
            out[k] = np.asarray(r["expression"], np.float32)
    return out


def per_frame_diff(pred: np.ndarray, target: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[N] the MSE of the coefficients ``index`` per frame (NaN where either side has no fit)."""
    out = np.mean((pred[:, index] - target[:, index]) ** 2, 1)
    return np.where(np.isfinite(pred).all(1) & np.isfinite(target).all(1), out, np.nan)


def exp_diff(pred: np.ndarray, target: np.ndarray, index: np.ndarray) -> float:
    """Mean over frames (both fitted) of the MSE of the coefficients ``index``; NaN when no frame has both."""
    d = per_frame_diff(pred, target, index)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


def paired(better: np.ndarray, worse: np.ndarray, seed: int = 0, draws: int = 2000) -> dict[str, float]:
    """How surely per-frame errors ``better`` are below ``worse`` (frames finite in both): the share of frames
    where they are, and a bootstrap 95% interval of the mean of ``worse - better`` (frames resampled)."""
    ok = np.isfinite(better) & np.isfinite(worse)
    d = (worse - better)[ok]
    if d.size == 0:
        return {"wins": float("nan"), "gain": float("nan"), "gain_lo": float("nan"), "gain_hi": float("nan")}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (draws, d.size))].mean(1)
    return {"wins": float((d > 0).mean()), "gain": float(d.mean()), "gain_lo": float(np.percentile(means, 2.5)),
            "gain_hi": float(np.percentile(means, 97.5))}


def exp_diff_metrics(pred: np.ndarray, target: np.ndarray, names: list[str], prefix: str = "exp_diff") -> dict:
    """``<prefix>``, ``<prefix>_upper``, ``<prefix>_mouth`` and ``<prefix>_frames`` (frames fitted in both)."""
    groups = coefficient_groups(names)
    out = {prefix if g == "all" else f"{prefix}_{g}": exp_diff(pred, target, idx) for g, idx in groups.items()}
    out[f"{prefix}_frames"] = float((np.isfinite(pred).all(1) & np.isfinite(target).all(1)).sum())
    return out


def face_box(rect: np.ndarray, size: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """A face rectangle (x0, y0, x1, y1) widened by ``margin`` of its side, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(int(x0 - mx), 0), max(int(y0 - my), 0), min(int(np.ceil(x1 + mx)), size),
            min(int(np.ceil(y1 + my)), size))


def face_crop_metrics(pred: np.ndarray, target: np.ndarray, rect: np.ndarray, lpips: Any = None) -> dict[str, float]:
    """PSNR, SSIM (and LPIPS with a module) of the face crops of two uint8 [S, S, 3] images."""
    import torch

    from nerf.metrics import psnr, ssim

    x0, y0, x1, y1 = face_box(rect, pred.shape[0])
    p = torch.from_numpy(pred[y0:y1, x0:x1]).float() / 255.0
    t = torch.from_numpy(target[y0:y1, x0:x1]).float() / 255.0
    out = {"face_psnr": psnr(p, t), "face_ssim": ssim(p, t)}
    if lpips is not None:
        with torch.no_grad():
            out["face_lpips"] = float(lpips(p.permute(2, 0, 1)[None], t.permute(2, 0, 1)[None])[0])
    return out
