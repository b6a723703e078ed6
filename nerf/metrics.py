"""Image and lip-sync quality metrics: PSNR, SSIM, LPIPS (AlexNet) and mouth landmark distance.

Only torch, numpy and the ``lpips`` package are used; ``lpips`` (which imports torchvision) is
imported lazily, when an :class:`LPIPS` is built, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
MOUTH = slice(48, 68)
"""The mouth points (outer and inner lip) of the 68-point iBUG / face-alignment layout."""

# lpips' AlexNet slices hold torchvision's ``alexnet().features`` modules 0..11 under their original indices.
_ALEX_SLICES = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}
_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Peak signal-to-noise ratio for images with values in [0, 1].

    Args:
        pred: predicted image(s), float in [0, 1], any shape (e.g. ``[H, W, 3]`` or ``[B, H, W, 3]``).
        gt: ground truth, same shape as ``pred``.

    Returns:
        ``10 * log10(1 / mse)`` in dB over all elements; the MSE is clamped to 1e-10, so identical
        images give 100 dB rather than infinity.

    Raises:
        ValueError: the shapes differ.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"psnr: pred has shape {tuple(pred.shape)} but gt has shape {tuple(gt.shape)}")
    mse = torch.mean((pred.detach().double() - gt.detach().double()) ** 2).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """A normalised 1D Gaussian, ``[size]`` float64 (scipy's ``gaussian_filter`` taps for truncate=3.5)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Structural similarity, computed like scikit-image's Gaussian-weighted SSIM.

    Matches ``skimage.metrics.structural_similarity(pred, gt, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)``: an 11-tap Gaussian window
    (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, each channel on its own, and the SSIM map averaged
    without a border of 5 pixels (skimage filters with reflection and then crops that border; a
    valid convolution gives the same interior values).

    Args:
        pred: ``[H, W, 3]`` or ``[B, H, W, 3]`` (any channel count C) float in [0, 1]; H and W >= 11.
        gt: ground truth, same shape as ``pred``.

    Returns:
        The mean SSIM over batch, channels and pixels (1.0 for identical images).

    Raises:
        ValueError: the shapes differ, are not 3D / 4D, or the images are smaller than the window.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"ssim: pred has shape {tuple(pred.shape)} but gt has shape {tuple(gt.shape)}")
    if pred.dim() not in (3, 4):
        raise ValueError(f"ssim: expected [H, W, C] or [B, H, W, C] images, got shape {tuple(pred.shape)}")
    x = pred.detach().double()
    y = gt.detach().double()
    if x.dim() == 3:
        x, y = x[None], y[None]
    b, h, w, c = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    x = x.permute(0, 3, 1, 2)  # [B, C, H, W]
    y = y.permute(0, 3, 1, 2)
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    # separable Gaussian as two grouped convolutions: [C, 1, 11, 1] then [C, 1, 1, 11]
    gv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    gh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H-10, W-10]
        return F.conv2d(F.conv2d(t, gv, groups=c), gh, groups=c)

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    s = ((2 * ux * uy + SSIM_C1) * (2 * vxy + SSIM_C2)) / ((ux * ux + uy * uy + SSIM_C1) * (vx + vy + SSIM_C2))
    return float(s.mean().item())


def _load_alexnet_features(path: Path) -> dict[str, torch.Tensor]:
    """Read torchvision ``alexnet().features`` weights and rename them to lpips' ``net.net`` keys.

    Args:
        path: a ``state_dict`` file with keys ``features.K.weight`` / ``features.K.bias``.

    Returns:
        The tensors under ``sliceN.K.weight`` / ``sliceN.K.bias``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read or does not hold AlexNet feature weights.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS AlexNet weights not found at {path}: copy alexnet_features_imagenet.pth from the shared "
            "assets folder there (or torchvision's alexnet-owt-7be5be79.pth features)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch errors alike
        raise ValueError(f"LPIPS AlexNet weights at {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not state:
        raise ValueError(f"LPIPS AlexNet weights at {path} are not a state_dict (got {type(state).__name__})")
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.match(str(key))
        if m is None or not isinstance(value, torch.Tensor):
            raise ValueError(f"LPIPS AlexNet weights at {path}: unexpected entry {key!r} (want features.K.weight/bias)")
        index = int(m.group(1))
        slice_no = next((n for n, r in _ALEX_SLICES.items() if index in r), None)
        if slice_no is None:
            raise ValueError(f"LPIPS AlexNet weights at {path}: {key!r} is outside AlexNet's features 0..11")
        mapped[f"slice{slice_no}.{index}.{m.group(2)}"] = value
    return mapped


class LPIPS(torch.nn.Module):
    """Learned perceptual image patch similarity (LPIPS v0.1, AlexNet backbone), frozen.

    The linear heads come with the ``lpips`` package; the AlexNet backbone is loaded from a local
    file, so nothing is downloaded. Parameters are frozen but the distance is differentiable with
    respect to the images, so it can serve as a training loss.

    Args:
        weights_path: torchvision ``alexnet().features`` ``state_dict`` (keys ``features.K.*``), e.g.
            ``alexnet_features_imagenet.pth`` from the shared assets.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist.
        ValueError: ``weights_path`` is unreadable or its keys or shapes do not fit AlexNet's features.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path)
        features = _load_alexnet_features(path)
        import lpips

        with warnings.catch_warnings():  # torchvision's deprecation of `pretrained=`, used inside lpips
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        try:
            self.model.net.load_state_dict(features, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"LPIPS AlexNet weights at {path} do not fit AlexNet's features ({exc})") from exc
        self.model.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        """Keep the metric in eval mode (no dropout) whatever the parent module's mode.

        Args:
            mode: ignored.

        Returns:
            self.
        """
        return super().train(False)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of each image pair.

        Args:
            pred: ``[B, 3, H, W]`` float in [0, 1].
            gt: ``[B, 3, H, W]`` float in [0, 1].

        Returns:
            ``[B]`` distances (0 for identical images), differentiable w.r.t. ``pred`` and ``gt``.

        Raises:
            ValueError: the shapes differ or are not ``[B, 3, H, W]``.
        """
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS wants two [B, 3, H, W] images, got {tuple(pred.shape)} and {tuple(gt.shape)}")
        d = self.model(pred * 2 - 1, gt * 2 - 1)  # [B, 1, 1, 1]
        return d.reshape(pred.shape[0])


def mouth_landmark_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mouth landmark distance (LMD): mean Euclidean distance of the mouth points, in pixels.

    Both sets must be in the same pixel frame: callers scale landmarks to a common image size
    (e.g. both to 512x512) before comparing, or the distance mixes scales.

    Args:
        pred: ``[N, 68, 2]`` landmarks (x, y) of the generated frames; a frame with NaN in its mouth
            points (face not detected) is skipped.
        gt: ``[N, 68, 2]`` landmarks of the reference frames, same convention.

    Returns:
        The distance of points 48..67 averaged over those points and the frames where both sets
        have landmarks.

    Raises:
        ValueError: the shapes differ or are not ``[N, 68, 2]``, or no frame has landmarks in both.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[1:] != (68, 2):
        raise ValueError(f"LMD wants two [N, 68, 2] arrays, got {pred.shape} and {gt.shape}")
    p, g = pred[:, MOUTH], gt[:, MOUTH]  # [N, 20, 2]
    ok = ~(np.isnan(p).any(axis=(1, 2)) | np.isnan(g).any(axis=(1, 2)))
    if not ok.any():
        raise ValueError(f"LMD: none of the {len(pred)} frames has mouth landmarks in both pred and gt")
    return float(np.linalg.norm(p[ok] - g[ok], axis=-1).mean())
