"""CPBD sharpness (nerf.sharpness) on a real frame of a shared clip, blurred, and on synthetic images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nerf.sharpness import cpbd


@pytest.fixture(scope="module")
def frame(shared: Path) -> np.ndarray:
    """The first frame of a real 512x512 talking-head clip, uint8 [H, W, 3] RGB."""
    clip = shared / "data" / "clips" / "RD_Radio2_000.mp4"
    cap = cv2.VideoCapture(str(clip))
    ok, bgr = cap.read()
    cap.release()
    assert ok, f"cannot decode {clip}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian-blurred copy (per channel) of a uint8 image, float64 in [0, 1]."""
    img = image.astype(np.float64) / 255.0
    if sigma == 0:
        return img
    return gaussian_filter(img, (sigma, sigma, 0) if img.ndim == 3 else sigma)


def _bars() -> np.ndarray:
    """A 256x256 uint8 image of sharp vertical bars (period 32, one mid-grey pixel at each step)."""
    x = np.arange(256)
    profile = np.where(x % 32 < 16, 40.0, 210.0)
    profile[x % 16 == 0] = 125.0
    return np.tile(profile, (256, 1)).astype(np.uint8)


def test_cpbd_decreases_with_blur(frame: np.ndarray) -> None:
    scores = [cpbd(_blurred(frame, sigma)) for sigma in (0, 1, 2, 3)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1] > scores[2] > scores[3], scores
    assert scores[0] > 0.3 and scores[0] - scores[3] > 0.3, scores


def test_gray_and_rgb_agree(frame: np.ndarray) -> None:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    assert cpbd(gray) == pytest.approx(cpbd(frame), abs=0.005)
    assert cpbd(gray[..., None]) == pytest.approx(cpbd(gray), abs=1e-12)


def test_uint8_and_float_agree(frame: np.ndarray) -> None:
    assert cpbd(frame / 255.0) == pytest.approx(cpbd(frame), abs=1e-12)
    assert cpbd(frame.astype(np.float32) / 255) == pytest.approx(cpbd(frame), abs=1e-12)


def test_flat_and_tiny_images_score_zero() -> None:
    assert cpbd(np.full((128, 128, 3), 128, np.uint8)) == 0.0
    assert cpbd(np.full((96, 160), 0.25)) == 0.0
    assert cpbd(_bars()[:40, :40]) == 0.0  # smaller than one 64x64 block


def test_synthetic_step_edges() -> None:
    bars = _bars()
    assert cpbd(bars) > 0.95
    assert cpbd(_blurred(bars, 4)) < 0.05


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        cpbd(np.zeros((4, 64, 64, 3), np.uint8))
