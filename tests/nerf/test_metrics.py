"""Image and lip-sync metrics on a real frame of a shared clip: PSNR, SSIM (vs scikit-image), LPIPS, LMD."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nerf.metrics import LPIPS, mouth_landmark_distance, psnr, ssim
from tests.conftest import SHARED

CLIP = SHARED / "data" / "clips" / "RD_Radio2_000.mp4"
ALEXNET = SHARED / "assets" / "alexnet_features_imagenet.pth"

pytestmark = pytest.mark.skipif(not CLIP.is_file(), reason=f"real clip {CLIP} not found")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """The first frame of a real 512x512 talking-head clip, uint8 [H, W, 3] RGB."""
    cap = cv2.VideoCapture(str(CLIP))
    ok, bgr = cap.read()
    cap.release()
    assert ok, f"cannot decode {CLIP}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def lpips_alex() -> LPIPS:
    """One LPIPS metric with the shared AlexNet weights."""
    return LPIPS(ALEXNET)


def _degraded(frame: np.ndarray) -> np.ndarray:
    """A blurred and noised copy of ``frame``, float64 [H, W, 3] in [0, 1]."""
    rng = np.random.default_rng(0)
    blurred = cv2.GaussianBlur(frame, (0, 0), 1.2).astype(np.float64) / 255
    return np.clip(blurred + rng.normal(0, 0.03, frame.shape), 0, 1)


def _nchw(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def test_psnr_known_values_and_skimage(frame):
    """PSNR is 20 dB for a uniform 0.1 error, 100 dB (clamped) for identical images, and matches skimage."""
    zeros = torch.zeros(8, 8, 3)
    assert psnr(zeros + 0.1, zeros) == pytest.approx(20.0, abs=1e-4)
    assert psnr(zeros, zeros) == pytest.approx(100.0)
    a, b = frame / 255, _degraded(frame)
    assert psnr(torch.tensor(b), torch.tensor(a)) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0))


def test_ssim_matches_skimage_on_real_frame(frame):
    """SSIM of a real frame vs a blurred and noised copy matches scikit-image's Gaussian SSIM within 1e-3."""
    a, b = frame / 255, _degraded(frame)
    ref = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    got = ssim(torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32))
    assert 0.3 < ref < 0.95
    assert got == pytest.approx(ref, abs=1e-3)


def test_ssim_batch_is_mean_of_images(frame):
    """A [B, H, W, 3] batch gives the mean SSIM of its images; identical images give 1."""
    a = torch.tensor(frame[:128, :128] / 255)
    b = torch.tensor(_degraded(frame)[:128, :128])
    c = torch.tensor(frame[128:256, 128:256] / 255)
    assert ssim(a, a) == pytest.approx(1.0)
    batch = ssim(torch.stack([b, c]), torch.stack([a, a]))
    assert batch == pytest.approx((ssim(b, a) + ssim(c, a)) / 2, abs=1e-9)


def test_ssim_rejects_bad_shapes():
    """Mismatched shapes and images smaller than the window raise ValueError."""
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.zeros(16, 16, 3), torch.zeros(16, 17, 3))
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))


def test_lpips_published_values(frame, lpips_alex):
    """LPIPS of a real face: 0 for identical images, ~0.02 for a 1-pixel shift, ~0.27 for a sigma-2 blur."""
    gt = _nchw(frame)
    shifted = _nchw(np.roll(frame, 1, axis=1))
    blurred = _nchw(cv2.GaussianBlur(frame, (0, 0), 2))
    with torch.no_grad():
        d = lpips_alex(torch.cat([gt, shifted, blurred]), gt.expand(3, -1, -1, -1))
    assert d.shape == (3,)
    assert abs(d[0].item()) < 1e-6
    assert 0.005 <= d[1].item() <= 0.06
    assert 0.15 <= d[2].item() <= 0.4


def test_lpips_is_frozen_and_differentiable(frame, lpips_alex):
    """LPIPS has no trainable parameters, stays in eval mode, and passes gradients to its inputs."""
    assert not any(p.requires_grad for p in lpips_alex.parameters())
    lpips_alex.train()
    assert not lpips_alex.training and not lpips_alex.model.training
    gt = _nchw(frame[200:264, 200:264])
    pred = _nchw(cv2.GaussianBlur(frame, (0, 0), 2)[200:264, 200:264]).requires_grad_(True)
    lpips_alex(pred, gt).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_alex.parameters())


def test_lpips_missing_or_bad_weights(tmp_path: Path):
    """A missing, corrupt or foreign weights file raises an error naming the file."""
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS(missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt.pth"):
        LPIPS(corrupt)
    foreign = tmp_path / "foreign.pth"
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pth"):
        LPIPS(foreign)
    partial = tmp_path / "partial.pth"
    state = torch.load(ALEXNET, weights_only=True)
    del state["features.10.bias"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match="partial.pth"):
        LPIPS(partial)


def test_mouth_landmark_distance_skips_undetected_frames():
    """LMD averages mouth points 48..67 over frames detected in both sets and ignores the other points."""
    gt = np.zeros((4, 68, 2))
    pred = np.zeros((4, 68, 2))
    pred[:, 48:68] += [3.0, 4.0]  # every mouth point 5 px off
    pred[:, :48] += 100.0  # not mouth: ignored
    pred[1, 50] = np.nan  # not detected in pred
    gt[2] = np.nan  # not detected in gt
    pred[3, 48:68] += [3.0, 4.0]  # 10 px off
    assert mouth_landmark_distance(pred, gt) == pytest.approx(7.5)  # frames 0 (5 px) and 3 (10 px)


def test_mouth_landmark_distance_errors():
    """No frame with both sets, or wrong shapes, raise ValueError."""
    gt = np.zeros((2, 68, 2))
    pred = np.full((2, 68, 2), np.nan)
    with pytest.raises(ValueError, match="none of the 2 frames"):
        mouth_landmark_distance(pred, gt)
    with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
        mouth_landmark_distance(np.zeros((2, 68, 3)), np.zeros((2, 68, 3)))
