"""Training loops of the three audio-lip models over an :class:`~nerf.audio_lip.data.AudioLipData`.

Each loop draws its own batches from a seeded generator (several data-parallel workers pass different seeds and a
``wrap`` that makes the model distributed), calls ``on_epoch(epoch, metrics)`` after each epoch, and returns the
trained module. The landmark autoencoder must come first: the audio encoder learns against its frozen mouth code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.audio_lip.augment import MelAugment, augment_mel
from nerf.audio_lip.data import SCORER_AUDIO, AudioLipData, lae_pairs, video_windows, window_starts
from nerf.audio_lip.models import (
    AudioLipConfig,
    AudioLipEncoder,
    LandmarkAE,
    LandmarkAEConfig,
    SyncScorer,
    SyncScorerConfig,
    swap_targets,
)

OnEpoch = Callable[[int, dict[str, float]], None]
Wrap = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class LandmarkAETrain:
    epochs: int = 150
    """JEAN trains 15 epochs of MEAD (hours of frames); a dataset of a few thousand frames needs more passes."""
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    swap: float = 0.8
    """Chance the two frames' mouth codes are swapped (JEAN's epsilon)."""
    model: LandmarkAEConfig = field(default_factory=LandmarkAEConfig)


@dataclass(frozen=True)
class ContrastiveTrain:
    """What the audio encoder's and the scorer's contrastive training share."""

    epochs: int = 60
    clips_per_batch: int = 8
    frames_per_clip: int = 32
    """A batch is contiguous stretches of a few clips: other times of the same clip (3..31 frames away) are the
    hard negatives, the scorer's offset negatives."""
    lr: float = 1e-3
    final_lr: float = 1e-5
    """Exponential decay from ``lr`` to this over training."""
    tau: float = 0.07
    near: int = 2
    """Frames within this distance of the positive are neither positive nor negative (their mouths look alike)."""
    cross_clip_negatives: bool = True
    """Also use the batch's other clips as negatives."""


@dataclass(frozen=True)
class AudioLipTrain(ContrastiveTrain):
    final_lr: float = 5e-6
    """JEAN supp. 8.2."""
    tau: float = 0.1
    cross_clip_negatives: bool = False
    """Off: other people in the batch are told apart by voice, which a network of a few dozen people learns
    instead of lips (held-out retrieval 0.042 with them, 0.063 without)."""
    identity_negatives: bool = True
    """Add one negative per row from another clip of the same identity (JEAN's negative), when there is one."""
    augment: MelAugment = field(default_factory=MelAugment)
    model: AudioLipConfig = field(default_factory=AudioLipConfig)


@dataclass(frozen=True)
class ScorerTrain(ContrastiveTrain):
    """On its dynamics-only inputs (:class:`SyncScorer`) the scorer learns slowly: about 17-23 s an epoch of ten
    thousand frames on 2 cores. Other clips stay negatives: with same-clip negatives only it collapsed from the
    start, and its inputs keep only what changes within the 0.2 s, so other clips cannot be told apart by face or
    voice alone."""

    flip: float = 0.5
    """Chance a visual window is mirrored left-right (a mouth's mirror image speaks the same sound)."""
    shift: int = 3
    """Largest random shift of a visual window (px), so the crop's exact placement is not learnt."""
    augment: MelAugment = field(default_factory=lambda: MelAugment(time_mask=1))
    model: SyncScorerConfig = field(default_factory=SyncScorerConfig)


def steps_per_epoch(n_rows: int, batch: int) -> int:
    return max(1, math.ceil(n_rows / batch))


def _decay(opt: torch.optim.Optimizer, lr: float, final_lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    gamma = (final_lr / lr) ** (1.0 / max(steps, 1))
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


class SwapLoss(nn.Module):
    """JEAN's Eq. 1 as one ``forward`` (what a data-parallel wrapper synchronises): L1 of both decoded frames
    against their (possibly mouth-swapped) targets."""

    def __init__(self, lae: LandmarkAE):
        super().__init__()
        self.lae = lae

    def forward(self, a: Tensor, b: Tensor, swapped: Tensor) -> Tensor:
        fa, ma = self.lae.encode(a)
        fb, mb = self.lae.encode(b)
        s = swapped[:, None].float()
        pa = self.lae.decode(fa, s * mb + (1 - s) * ma)
        pb = self.lae.decode(fb, s * ma + (1 - s) * mb)
        ta, tb = swap_targets(a, b, swapped)
        return (pa - ta).abs().mean() + (pb - tb).abs().mean()


def train_landmark_ae(canonical: np.ndarray, data: AudioLipData, cfg: LandmarkAETrain, seed: int = 0,
                      on_epoch: OnEpoch | None = None, wrap: Wrap | None = None,
                      device: str | torch.device = "cpu") -> LandmarkAE:
    """Train the swap autoencoder on pose-free landmarks [N, 51, 2] (rows as in ``data``)."""
    if not data.valid.any():
        raise ValueError("the landmark autoencoder needs frames showing a face; this dataset has none")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lae = LandmarkAE(cfg.model)
    lae.set_normalisation(torch.from_numpy(canonical[data.valid]))
    lae.to(device)
    model = wrap(SwapLoss(lae)) if wrap else SwapLoss(lae)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    spans, x = data.spans(), torch.from_numpy(canonical)
    steps = steps_per_epoch(int(data.valid.sum()), cfg.batch)
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for _ in range(steps):
            ia, ib = lae_pairs(spans, data.valid, cfg.batch, rng)
            swapped = torch.from_numpy(rng.random(cfg.batch) < cfg.swap)
            loss = model(x[ia].to(device), x[ib].to(device), swapped.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        if on_epoch:
            on_epoch(epoch, {"lae_loss": total / steps})
    return lae.cpu().eval()


def require_windows(starts: np.ndarray, length: int, what: str) -> None:
    """Raises ValueError when no clip has ``length`` consecutive frames with a face and audio."""
    if len(starts) == 0:
        raise ValueError(f"the {what} needs clips with {length} consecutive frames showing a face with audio "
                         f"({length / 25:.1f} s); this dataset has none")


def stretches(starts: np.ndarray, data: AudioLipData, clips: int, length: int,
              rng: np.random.Generator) -> np.ndarray:
    """Rows [clips * length] of ``clips`` contiguous valid stretches from different clips (where there are enough)."""
    by_clip = data.clip[starts]
    ids = np.unique(by_clip)
    chosen = rng.choice(ids, min(clips, len(ids)), replace=False)
    firsts = [rng.choice(starts[by_clip == c]) for c in chosen]
    return (np.asarray(firsts)[:, None] + np.arange(length)[None, :]).reshape(-1)


def _mask(rows: np.ndarray, data: AudioLipData, near: int, cross_clip: bool) -> Tensor:
    """[B, B] True where row j may not be a negative of row i (i != j): too close in time within one clip, or, unless
    ``cross_clip``, of another clip (another voice and face tell those apart, not the lips)."""
    c, f = data.clip[rows], data.frame[rows]
    same = c[:, None] == c[None, :]
    masked = (same & (np.abs(f[:, None] - f[None, :]) <= near)) | (~same if not cross_clip else False)
    np.fill_diagonal(masked, False)
    return torch.from_numpy(masked)


def other_clip_rows(rows: np.ndarray, data: AudioLipData, rng: np.random.Generator) -> np.ndarray:
    """For each row, a random row of another clip of the same identity (else of any other clip)."""
    spans = data.spans()
    ident = np.asarray(data.clip_identity)
    out = np.empty(len(rows), np.int64)
    for i, r in enumerate(rows):
        c = data.clip[r]
        same = np.flatnonzero((ident == ident[c]) & (np.arange(len(ident)) != c))
        pool = same if len(same) else np.flatnonzero(np.arange(len(ident)) != c)
        s, e = spans[rng.choice(pool)]
        out[i] = rng.integers(s, e)
    return out


def train_audio_encoder(lae: LandmarkAE, canonical: np.ndarray, data: AudioLipData, cfg: AudioLipTrain,
                        seed: int = 0, on_epoch: OnEpoch | None = None, wrap: Wrap | None = None,
                        device: str | torch.device = "cpu") -> AudioLipEncoder:
    """InfoNCE of audio windows against the frozen mouth codes (JEAN Eq. 2, with in-batch and same-identity
    negatives)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    lae = lae.eval().requires_grad_(False)
    with torch.no_grad():
        mouth = F.normalize(torch.cat([lae.encode(torch.from_numpy(canonical[s : s + 4096]))[1]
                                       for s in range(0, len(canonical), 4096)]), dim=1)
    mouth = mouth.to(device)
    enc = AudioLipEncoder(cfg.model).to(device)
    model = wrap(enc) if wrap else enc
    batch = cfg.clips_per_batch * cfg.frames_per_clip
    steps = steps_per_epoch(int(data.valid.sum()), batch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _decay(opt, cfg.lr, cfg.final_lr, steps * cfg.epochs)
    starts = window_starts(data, cfg.frames_per_clip)
    require_windows(starts, cfg.frames_per_clip, "audio encoder")
    mel = torch.from_numpy(data.mel)
    for epoch in range(cfg.epochs):
        model.train()
        total = acc = 0.0
        for _ in range(steps):
            rows = stretches(starts, data, cfg.clips_per_batch, cfg.frames_per_clip, rng)
            extra = other_clip_rows(rows, data, rng) if cfg.identity_negatives else rows[:0]
            audio = augment_mel(mel[np.concatenate([rows, extra])], cfg.augment, gen)
            e_a = F.normalize(model(audio.to(device)), dim=1)
            logits = mouth[rows] @ e_a.T / cfg.tau  # [B, B + extra]
            masked = _mask(rows, data, cfg.near, cfg.cross_clip_negatives)
            if len(extra):  # row i's extra negative is its own: same person, other clip (JEAN); others' are masked
                ident = np.asarray(data.clip_identity)
                own = ident[data.clip[extra]] == ident[data.clip[rows]]
                extra_mask = ~torch.eye(len(rows), dtype=torch.bool) | ~torch.from_numpy(own)[:, None]
                masked = torch.cat([masked, extra_mask if not cfg.cross_clip_negatives else
                                    torch.zeros_like(extra_mask)], 1)
            logits = logits.masked_fill(masked.to(device), -1e4)
            target = torch.arange(len(rows), device=device)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            acc += (logits.argmax(1) == target).float().mean().item()
        if on_epoch:
            on_epoch(epoch, {"encoder_loss": total / steps, "encoder_batch_acc": acc / steps})
    return enc.cpu().eval()


def scorer_loss(v: Tensor, a: Tensor, masked: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE over a batch of unit video/audio codes; returns the loss and the video->audio accuracy."""
    logits = (v @ a.T / tau).masked_fill(masked, -1e4)
    target = torch.arange(len(v), device=v.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, (logits.argmax(1) == target).float().mean()


def jitter(crops: Tensor, flip: float, shift: int, gen: torch.Generator) -> Tensor:
    """Mirror some windows left-right and shift each by up to ``shift`` px (edges repeated), all its frames alike."""
    b = crops.shape[0]
    flipped = torch.rand(b, generator=gen) < flip
    crops = torch.where(flipped[:, None, None, None], crops.flip(-1), crops)
    if shift:
        pad = F.pad(crops.float(), (shift, shift, shift, shift), mode="replicate")
        dx, dy = (torch.randint(0, 2 * shift + 1, (2, b), generator=gen)).tolist()
        h, w = crops.shape[-2:]
        crops = torch.stack([p[:, y : y + h, x : x + w] for p, x, y in zip(pad, dx, dy, strict=True)])
    return crops


class _Towers(nn.Module):
    """Both scorer towers behind one ``forward`` (what a data-parallel wrapper synchronises)."""

    def __init__(self, scorer: SyncScorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, crops: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        return self.scorer.embed_video(crops), self.scorer.embed_audio(mel)


def train_scorer(data: AudioLipData, cfg: ScorerTrain, seed: int = 0, on_epoch: OnEpoch | None = None,
                 wrap: Wrap | None = None, device: str | torch.device = "cpu") -> SyncScorer:
    """The lip-sync scorer: in-sync 5-frame mouth windows and 0.2 s of audio against every other pairing of the
    batch (other clips, and the same clip 3..31 frames off)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    scorer = SyncScorer(cfg.model)
    scorer.to(device)
    model = wrap(_Towers(scorer)) if wrap else _Towers(scorer)
    frames = cfg.model.frames
    batch = cfg.clips_per_batch * cfg.frames_per_clip
    steps = steps_per_epoch(int(data.valid.sum()), batch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _decay(opt, cfg.lr, cfg.final_lr, steps * cfg.epochs)
    half = frames // 2
    starts = window_starts(data, cfg.frames_per_clip + 2 * half)
    require_windows(starts, cfg.frames_per_clip + 2 * half, "lip-sync scorer")
    starts = starts + half  # the visual windows stay inside
    mel = torch.from_numpy(np.ascontiguousarray(data.mel[:, SCORER_AUDIO]))
    for epoch in range(cfg.epochs):
        model.train()
        total = acc = 0.0
        for _ in range(steps):
            rows = stretches(starts, data, cfg.clips_per_batch, cfg.frames_per_clip, rng)
            crops = jitter(torch.from_numpy(video_windows(data.crops, rows, frames)), cfg.flip, cfg.shift, gen)
            v, a = model(crops.to(device), augment_mel(mel[rows], cfg.augment, gen).to(device))
            loss, batch_acc = scorer_loss(v, a, _mask(rows, data, cfg.near, cfg.cross_clip_negatives).to(device),
                                          cfg.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            acc += batch_acc.item()
        if on_epoch:
            on_epoch(epoch, {"scorer_loss": total / steps, "scorer_batch_acc": acc / steps})
    return scorer.cpu().eval()
