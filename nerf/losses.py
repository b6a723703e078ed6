"""Losses of RAD-NeRF's stages."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the photometric MSE has weight 1)."""

    alpha_entropy: float = 1e-4
    """Binary entropy of each ray's accumulated alpha: pushes the head (and torso) to be opaque or empty."""
    ambient_l1: float = 1e-2
    """L1 of the audio coordinate on rays outside ``ambient_region``: audio may only move the face (RAD-NeRF:
    1e-4 outside the face rectangle). Too weak on a short clip: the audio of 181 frames works as a time code,
    and unseen audio then moves hair, eyes and brows (held-out head PSNR rose 0.5 dB at 4500 steps, 2 dB on a
    30-min checkpoint, when held-out frames took their nearest training frame's audio instead of their own)."""
    ambient_region: Literal["face", "mouth"] = "mouth"
    """Where the audio coordinate may be non-zero (``ambient_l1`` applies outside it): the face rectangle
    (RAD-NeRF) or the mouth region (the lips and jaw, :func:`nerf.data.mouth_rect`). On RD_Radio2_000 (cpu preset,
    4500 head steps, seed 0; benchmarks/variants.py) ``face`` at 1e-4 -> ``mouth`` at 1e-2: held-out head PSNR
    21.80 -> 21.99 dB, and the audio-swap gap (22.28 vs 21.80) closes (22.00). After a whole 30-min training it
    is smaller but not closed (+1.35 dB, all outside the mouth, against +2.0 before); a hard 3D gate around the
    mouth (:attr:`nerf.fields.HeadFieldConfig.audio_gate`) did not add a measurable gain."""
    lips_lpips: float = 0.01
    """LPIPS on the lip patch in the lips stage."""
    lips_mse: float = 1.0
    """MSE on the lip patch in the lips stage."""
    head_mask: float = 0.01
    """Binary cross-entropy of the head's accumulated alpha against the parsing's head region, in the head and
    lips stages: keeps the head's silhouette on the parsed one (the band of background just outside the head is
    where a quarter to a third of held-out error was, see benchmarks/regions.py). On RD_Radio2_000 (cpu preset,
    head stage of 1500 steps, seeds 0/1/2) held-out head-only PSNR 21.52/21.13/20.86 dB without it, 21.74/21.41/
    21.82 with 0.01; 0.1 (seed 0) lowered training PSNR by 0.5 dB and held-out PSNR by 0.03 dB."""
    latent_smooth: float = 0.0
    """Mean squared difference of the appearance latents of consecutive training frames (same clip, at most
    :data:`nerf.data.LATENT_PAIR_GAP` frames apart), head latents in the head and lips stages, torso latents in
    the torso stage: a latent that drifts slowly in time is one that held-out frames, which borrow their nearest
    training frames' latents, can predict. Off by default: at 1.0 (cpu preset, 4500 head steps, seed 1,
    benchmarks/variants.py) held-out head PSNR 22.17 dB against 22.30 without, training frames 24.70 both. On a
    30-min checkpoint the head latents already drift slowly (mean squared step 0.0015 against a variance over time of
    0.019), and a latent fitted to each held-out frame's left half did not raise PSNR on its right half
    (-0.01 to -0.40 dB), so the borrowed latents are not what held-out frames lack."""
    pose_smooth: float = 0.0
    """Mean squared difference of the head pose corrections (:attr:`nerf.models.RadNerfConfig.pose_refine`; radians
    and metres) of consecutive training frames (the pairs of ``latent_smooth``), in the head and lips stages: a
    frame's correction is learnt only from the few rays of it in a batch, while the tracking error it corrects
    drifts slowly, and held-out frames borrow their nearest training frames' corrections. Off by default: at 10
    (cpu preset, pose_refine, 3000 head steps, seed 0, benchmarks/variants.py) the corrections' median step between
    frames fell from 0.31 to 0.11 degrees, but held-out head PSNR did not rise: WDA_AlexandriaOcasioCortez_000
    24.85 dB against 24.88 without (training frames 26.05 against 26.34), WDA_BobMenendez_000 28.12 against 29.03
    (29.61 against 29.95). A frame's correction is not noise to average out."""
    grid_tv: float = 0.0
    """Total variation of the head's feature planes, spatial and audio (:meth:`nerf.encoders.PlaneEncoder.
    total_variation`: the mean squared difference of neighbouring texels, averaged over levels), in the head and
    lips stages: a smoothness prior after K-Planes; texels that no training ray reaches, or that would fit one
    training view's detail, follow their neighbours. Off by default. On WDA_BobMenendez_000 (cpu preset,
    benchmarks/variants.py, 3000 head steps, seed 0) held-out head PSNR 28.11 dB without, 28.10 at 1e-3, 28.29 at
    1e-2 (training frames 28.70 / 28.72 / 28.60), but its head steps cost ~10% more (the loss itself ~10 ms). Over
    two whole 30-min runs at 1e-2 (benchmarks/train.py --set model.losses.grid_tv=1e-2) held-out PSNR 28.03 and
    27.68 dB, LPIPS 0.109 and 0.106, against 28.00 and 27.64 dB, LPIPS 0.097 and 0.100 without: the head's held-out
    PSNR still peaks at 300-600 s (28.42, 28.24) and falls by the head stage's end (28.12, 27.81). Not on the
    torso: in the first of those runs it was on the torso's planes too, and the torso stage lowered held-out PSNR
    (28.23 -> 28.11 dB on every 2nd held-out frame)."""
    ABSENT_IN_OLD_CONFIGS: ClassVar[dict[str, object]] = {"ambient_region": "face"}
    """Fields whose absence from a saved config means the behaviour from before they existed (see
    :class:`nerf.fields.HeadFieldConfig`)."""
    torso_mask: float = 0.0
    """Binary cross-entropy of the torso's alpha against the parsing's body (torso + neck) outside the head, meant
    to keep the torso off the background on frames it has not seen. Off by default: on RD_Radio2_000 (torso stage
    retrained on two fixed heads) it moved held-out PSNR by -0.8 to +0.7 dB, inside the run-to-run spread."""

    def __post_init__(self) -> None:
        # a negative weight would reward what the term penalises (rough planes, a transparent head, ...)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        bad = [f"{k}={v}" for k, v in values.items() if isinstance(v, int | float) and not v >= 0]
        if bad:
            raise ValueError(f"loss weights: invalid {', '.join(bad)} (weights must be >= 0)")


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
