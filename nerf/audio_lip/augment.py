"""Audio augmentation on log-mel windows, so the encoders learn lips rather than the speaker or the room.

Windows are the dataset's scaled log-mel (0..1 over -100..0 dB). Each window gets, independently: a gain, added
noise of a random level and spectral tilt, a shift of a band or two along the mel axis (a crude pitch shift), and
one frequency mask and one time mask (SpecAugment).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MelAugment:
    gain_db: float = 10.0
    """Gain drawn uniformly in +-gain_db."""
    noise_db: tuple[float, float] = (-80.0, -45.0)
    """Noise power per mel band (dB, before tilt), drawn uniformly; a sample with noise is ``noise_p`` likely."""
    noise_p: float = 0.5
    band_shift: int = 2
    """Largest shift along the mel axis (bands)."""
    freq_mask: int = 12
    """Widest frequency mask (bands)."""
    time_mask: int = 2
    """Widest time mask (mel frames)."""
    p: float = 0.8
    """Chance a window is augmented at all."""


def augment_mel(mel: Tensor, cfg: MelAugment, gen: torch.Generator | None = None) -> Tensor:
    """``[B, T, F]`` scaled log-mel -> an augmented copy (same scaling)."""
    b, t, f = mel.shape
    dev = mel.device

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, device="cpu").to(dev)

    on = (u(b) < cfg.p).float()[:, None, None]
    db = mel * 100.0 - 100.0 + (u(b, 1, 1) * 2 - 1) * cfg.gain_db
    lo, hi = cfg.noise_db
    level = lo + (hi - lo) * u(b, 1, 1)
    tilt = (u(b, 1, 1) * 2 - 1) * 15.0 * torch.linspace(-1, 1, f, device=dev)[None, None, :]
    noise = 10 ** ((level + tilt) / 10) * (u(b, 1, 1) < cfg.noise_p).float()
    db = 10 * torch.log10(10 ** (db / 10) + noise + 1e-12)
    out = ((db + 100.0) / 100.0).clamp(0, 1)
    if cfg.band_shift:
        shifts = torch.randint(-cfg.band_shift, cfg.band_shift + 1, (b,), generator=gen).tolist()
        out = torch.stack([torch.roll(o, s, dims=1) if s else o for o, s in zip(out, shifts, strict=True)])
    fill = out.mean((1, 2), keepdim=True)
    bands = torch.arange(f, device=dev)[None, None, :]
    f0, fw = u(b, 1, 1) * f, u(b, 1, 1) * (cfg.freq_mask + 1)
    fmask = (bands >= f0) & (bands < f0 + fw.floor())
    steps = torch.arange(t, device=dev)[None, :, None]
    t0, tw = u(b, 1, 1) * t, u(b, 1, 1) * (cfg.time_mask + 1)
    tmask = (steps >= t0) & (steps < t0 + tw.floor())
    out = torch.where(fmask | tmask, fill, out)
    return on * out + (1 - on) * mel
