"""Loss terms as functions of outputs and targets (each method weighs and combines its own)."""

from __future__ import annotations

import torch
from torch import Tensor


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of colours [R, 3]."""
    return torch.mean((pred - target) ** 2)


def alpha_entropy(alpha: Tensor) -> Tensor:
    """Mean binary entropy (bits) of alphas [R], clamped away from 0 and 1."""
    p = alpha.clamp(1e-5, 1 - 1e-5)
    return torch.mean(-(p * torch.log2(p) + (1 - p) * torch.log2(1 - p)))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` [R] over the rays where ``mask`` (bool [R]) holds; 0 if it holds nowhere. Weighted by the
    mask rather than indexed by it, so that on a GPU neither the count nor the selection waits for the device."""
    w = mask.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


def ambient_l1(ambient: Tensor, face: Tensor) -> Tensor:
    """Mean of the weighted |audio coordinate| [R] over rays outside the face (bool [R]); 0 if there are none."""
    return masked_mean(ambient, ~face)


def mask_bce(alpha: Tensor, inside: Tensor, valid: Tensor) -> Tensor:
    """Mean binary cross-entropy of alphas [R] against a bool mask [R] over ``valid`` rays (bool [R]); 0 if none."""
    p = alpha.clamp(1e-5, 1 - 1e-5)
    bce = torch.nn.functional.binary_cross_entropy(p, inside.to(p.dtype), reduction="none")
    return masked_mean(bce, valid)


def latent_smoothness(latents: Tensor, pairs: Tensor) -> Tensor:
    """Mean over ``pairs`` [P, 2] (frame ids) of the squared distance between their ``latents`` [N, D]."""
    if pairs.numel() == 0 or latents.shape[1] == 0:
        return latents.sum() * 0.0
    return torch.mean(torch.sum((latents[pairs[:, 0]] - latents[pairs[:, 1]]) ** 2, -1))
