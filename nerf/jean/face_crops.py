"""A self-supervised face-crop encoder: JEAN's expression features learnt from the identity's own frames, for when
the geometric features (blendshapes, the 3DMM expression) hold too little of the face's expression (issue 38: the
transformer failed on them the way the paper's ablation (d) failed on 3DMM parameters).

Input: grey face crops aligned by the eyes and the mouth (:func:`jobs.jean_data.align_face`), CROP x CROP. The
encoder is the half of a denoising autoencoder: the decoder rebuilds the clean crop from the code of a crop that was
moved, scaled, turned and relit a little, so the code keeps what the face does and drops the nuisances that survive
the alignment (residual pose, the landmarks' jitter, light). Each crop is standardised first (its own mean and
spread), so global brightness and contrast never reach the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CROP = 64
"""Side of an aligned crop, px."""
CODE = 64
"""Width of a crop's code (the expression transformer's ``features``)."""


@dataclass(frozen=True)
class CropEncoderConfig:
    """The crop encoder's shape and how it trains, per identity, before the expression transformer."""

    width: int = 16
    """Channels of the first convolution (doubling at each of the four halvings)."""
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    final_lr: float = 1e-4
    shift: float = 0.04
    """Largest random shift, as a fraction of the crop side (the landmarks' jitter and residual misalignment)."""
    scale: float = 0.04
    rotate_deg: float = 4.0
    light: float = 0.25
    """Largest multiplicative change of a linear left-to-right light ramp (one side lit more than the other)."""


def standardise(x: Tensor) -> Tensor:
    """Crops [N, CROP*CROP] (or [N, 1, CROP, CROP]) in any range -> [N, 1, CROP, CROP], each zero-mean, unit-spread."""
    x = x.reshape(x.shape[0], 1, CROP, CROP).float()
    flat = x.flatten(1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-3)).view_as(x)


class FaceCropEncoder(nn.Module):
    """Aligned crop -> code [N, CODE] (:meth:`forward`); :meth:`decode` rebuilds a standardised crop from it."""

    def __init__(self, width: int = 16, code: int = CODE):
        super().__init__()
        w = [1, width, 2 * width, 4 * width, 8 * width]  # 64 -> 32 -> 16 -> 8 -> 4
        enc: list[nn.Module] = []
        for a, b in zip(w[:-1], w[1:], strict=True):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(w[-1] * 16, code))
        dec: list[nn.Module] = []
        for a, b in zip(w[:1:-1], w[-2:0:-1], strict=True):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
        self.to_grid = nn.Linear(code, w[-1] * 16)
        self.decoder = nn.Sequential(*dec, nn.ConvTranspose2d(w[1], 1, 4, stride=2, padding=1))
        self.width, self.code = width, code

    def forward(self, crops: Tensor) -> Tensor:
        return self.encoder(standardise(crops))

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(self.to_grid(code).view(code.shape[0], 8 * self.width, 4, 4))

    @torch.no_grad()
    def encode(self, crops: np.ndarray | Tensor, batch: int = 512) -> Tensor:
        """Codes of many crops [N, CROP*CROP] (uint8 or float), in eval mode: float32 [N, CODE]."""
        was = self.training
        self.eval()
        x = torch.as_tensor(np.asarray(crops) if not isinstance(crops, Tensor) else crops)
        dev = next(self.parameters()).device
        out = [self(x[k:k + batch].to(dev)).float() for k in range(0, x.shape[0], batch)]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.code, device=dev)


def nuisance(x: Tensor, cfg: CropEncoderConfig, gen: torch.Generator) -> Tensor:
    """Standardised crops [N, 1, S, S] moved, scaled, turned and relit at random (within ``cfg``'s limits)."""
    n = x.shape[0]

    def u(lim: float) -> Tensor:
        return (torch.rand(n, generator=gen) * 2 - 1) * lim

    ang, s = u(math.radians(cfg.rotate_deg)), 1 + u(cfg.scale)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = s * torch.cos(ang), -s * torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = s * torch.sin(ang), s * torch.cos(ang)
    theta[:, :, 2] = torch.stack([u(2 * cfg.shift), u(2 * cfg.shift)], 1)  # grid units span 2
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    ramp = torch.linspace(-1, 1, x.shape[-1], device=x.device).view(1, 1, 1, -1)
    light = 1 + u(cfg.light).to(x).view(n, 1, 1, 1) * ramp
    return standardise((moved - moved.amin((2, 3), keepdim=True) + 0.1) * light)


def train_crop_encoder(crops: np.ndarray, cfg: CropEncoderConfig = CropEncoderConfig(), seed: int = 0,
                       log_every: int = 0) -> FaceCropEncoder:
    """A :class:`FaceCropEncoder` trained on one identity's aligned crops [N, CROP*CROP] (the training frames only).

    Raises:
        ValueError: crops of the wrong shape, or fewer than two.
    """
    x = np.asarray(crops)
    if x.ndim != 2 or x.shape[1] != CROP * CROP or x.shape[0] < 2:
        raise ValueError(f"face crops of shape {list(x.shape)}; the encoder takes [N>1, {CROP * CROP}] "
                         f"({CROP}x{CROP} aligned grey crops)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FaceCropEncoder(cfg.width)
    clean = standardise(torch.from_numpy(x.astype(np.float32)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay = (cfg.final_lr / cfg.lr) ** (1 / max(cfg.steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, decay)
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, clean.shape[0], (min(cfg.batch, clean.shape[0]),), generator=gen)
        target = clean[idx]
        loss = F.l1_loss(model.decode(model.encoder(nuisance(target, cfg, gen))), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(f"crop encoder step {step}: L1 {float(loss):.4f}", flush=True)
    return model.eval()
