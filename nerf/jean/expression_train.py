"""Training the expression transformer of one identity (JEAN 3.2) with the audio-anchored swap, and the checks of
what its two parts hold.

A step draws windows A of 8 frames of one clip and, for each, a window B of the same clip a little apart in time
(``near`` frames: the same expression, other words). With probability ``swap`` the decoder reconstructs A from the
lip part g(e_a) of A's audio codes and B's expression part; otherwise from A's own parts. L1 in normalised feature
units (Eq. 4), plus an L1 tie of A's lip part to g(e_a) (the encoder's e_l is then what audio can say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nerf.jean.expression import ExpressionTransformer, ExpressionTransformerConfig, swap_inputs


@dataclass(frozen=True)
class ExpressionTrain:
    steps: int = 800
    batch: int = 32
    """Windows per step (JEAN: 256 pairs; one identity's clip has a few hundred windows)."""
    lr: float = 1e-3
    final_lr: float = 1e-4
    weight_decay: float = 1e-5
    """JEAN supp. 8.3 (Adam, weight decay 1e-5)."""
    swap: float = 0.8
    """Probability of the swap (delta)."""
    near: tuple[int, int] = (8, 50)
    """Frames between a window's start and its swap partner's (either way): 0.3-2 s."""
    tie: float = 1.0
    """Weight of the L1 tie of e_l to g(e_a)."""
    steady: float = 0.1
    """Weight of :func:`steadiness` between the expression parts of a window and of its nearby partner, frame by
    frame: expression holds over seconds and speech does not, so an expression part that stays put cannot carry
    what the mouth says. The swap alone only teaches the decoder not to read speech from e_e; it leaves the
    encoder free to keep it there, where a NeRF conditioned on e_e would find it. On a synthetic mix with known
    truth it leaves speech ~0% of e_e's variance (tests/nerf/test_jean_expression.py)."""

    def __post_init__(self) -> None:
        lo, hi = self.near
        if not 0 < lo <= hi:
            raise ValueError(f"near {self.near}: frames between windows, 0 < low <= high")
        if not 0.0 <= self.swap <= 1.0:
            raise ValueError(f"swap {self.swap}: a probability")


class ExpressionDataError(ValueError):
    """Too few frames for the windows."""


def window_starts(clip_of_row: np.ndarray, window: int) -> np.ndarray:
    """Rows that start a window of ``window`` consecutive rows of one clip."""
    clip = np.asarray(clip_of_row)
    n = len(clip) - window + 1
    if n <= 0:
        return np.zeros(0, np.int64)
    ok = clip[:n] == clip[window - 1:]
    return np.nonzero(ok)[0].astype(np.int64)


def partners(starts: np.ndarray, clip_of_row: np.ndarray, near: tuple[int, int],
             rng: np.random.Generator) -> np.ndarray:
    """For each start, another start of its clip ``near`` rows away (the nearest valid one when none is in range)."""
    clip = np.asarray(clip_of_row)
    out = np.empty(len(starts), np.int64)
    pool_by_clip = {c: starts[clip[starts] == c] for c in np.unique(clip[starts])}
    for i, s in enumerate(starts):
        pool = pool_by_clip[clip[s]]
        d = np.abs(pool - s)
        ok = pool[(d >= near[0]) & (d <= near[1])]
        if len(ok):
            out[i] = rng.choice(ok)
        else:  # a short clip: the furthest start there is
            out[i] = pool[np.argmax(d)]
    return out


def _windows(x: torch.Tensor, starts: np.ndarray, window: int) -> torch.Tensor:
    idx = torch.from_numpy(starts)[:, None] + torch.arange(window)[None]
    return x[idx]


def train_expression(features: np.ndarray, audio: np.ndarray, clip_of_row: np.ndarray,
                     config: ExpressionTransformerConfig, cfg: ExpressionTrain = ExpressionTrain(), seed: int = 0,
                     on_step: Callable[[int, dict[str, float]], None] | None = None) -> ExpressionTransformer:
    """Train on one identity's training frames: ``features [N, F]``, their unit audio codes ``audio [N, 64]``
    (the frozen audio-lip encoder's) and their clip per row.

    Raises:
        ExpressionDataError: no window of ``config.window`` consecutive frames of one clip.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    w = config.window
    starts = window_starts(clip_of_row, w)
    if len(starts) < 2:
        raise ExpressionDataError(f"{len(features)} frames give {len(starts)} windows of {w} frames of one clip "
                                  "(need 2)")
    model = ExpressionTransformer(config)
    x = torch.as_tensor(features, dtype=torch.float32)
    a = torch.as_tensor(audio, dtype=torch.float32)
    model.set_normalisation(x)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gamma = (cfg.final_lr / cfg.lr) ** (1.0 / max(cfg.steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(cfg.steps):
        batch = rng.choice(starts, size=min(cfg.batch, len(starts)), replace=len(starts) < cfg.batch)
        losses = expression_losses(model, x, a, batch, partners(batch, clip_of_row, cfg.near, rng), cfg, gen)
        loss = losses["recon"] + cfg.tie * losses["tie"] + cfg.steady * losses["steady"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, {k: float(v.detach()) for k, v in losses.items()})
    model.eval()
    return model


def expression_losses(model: ExpressionTransformer, x: torch.Tensor, a: torch.Tensor, starts: np.ndarray,
                      near: np.ndarray, cfg: ExpressionTrain, gen: torch.Generator | None = None,
                      swap: bool | None = None) -> dict[str, torch.Tensor]:
    """``recon`` (L1 of the reconstruction of windows ``starts``), ``tie`` (L1 of e_l to g(e_a)) and ``steady``
    (:func:`steadiness` of each window's e_e to its partner's, windows ``near``); ``swap``
    forces the swap on (True) or off (False) instead of drawing it."""
    w = model.config.window
    xa, aa, xb = _windows(x, starts, w), _windows(a, starts, w), _windows(x, near, w)
    lip, expr = model.encode(xa)
    _, expr_b = model.encode(xb)
    g = model.lip_from_audio(aa)
    mask = torch.rand(len(starts), generator=gen) < cfg.swap if swap is None else torch.full((len(starts),), swap)
    lip_in, expr_in = swap_inputs(lip, expr, g, expr_b, mask)
    y = model.decode(lip_in, expr_in)
    return {"recon": F.l1_loss(y, model.normalise(xa)), "tie": F.l1_loss(lip, g.detach()),
            "steady": steadiness(expr, expr_b)}


def steadiness(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of paired codes [B, ..., D] relative to their spread over the batch (dim 0) at
    each position: small when partners agree while the codes still differ between windows, so shrinking every
    code does not lower it. Per position, because the codes differ by position within a window: a spread taken
    over all positions at once counted that difference as spread and hid codes that followed each frame's speech
    (0.06 over the window, 1.9 at its centre)."""
    spread = 0.5 * (a.var(0) + b.var(0))
    return (((a - b) ** 2).mean(0) / (spread.mean(-1, keepdim=True) + 1e-6)).mean()


def probe_r2(codes_train: np.ndarray, target_train: np.ndarray, codes_test: np.ndarray, target_test: np.ndarray,
             ridge: float = 1e-2, pooled: bool = False) -> float:
    """R^2 on test rows of a ridge regression from codes to a target (1-d or several columns): the mean of the
    columns' R^2, or with ``pooled`` one R^2 over all columns (each weighted by its variance).

    Scale matters for what it says: a code -> target probe finds a target in a code even when it lives in a
    direction of tiny variance; the reverse, target -> code pooled, is the share of the code's variance the target
    explains (what a network reading the code mostly sees)."""
    def design(c: np.ndarray) -> np.ndarray:
        c = c.reshape(len(c), -1).astype(np.float64)
        return np.concatenate([c, np.ones((len(c), 1))], 1)

    xtr, xte = design(codes_train), design(codes_test)
    ytr = target_train.reshape(len(target_train), -1).astype(np.float64)
    yte = target_test.reshape(len(target_test), -1).astype(np.float64)
    w = np.linalg.solve(xtr.T @ xtr + ridge * np.eye(xtr.shape[1]), xtr.T @ ytr)
    res = ((xte @ w - yte) ** 2).sum(0)
    tot = ((yte - ytr.mean(0)) ** 2).sum(0)
    if pooled:
        return float(1.0 - res.sum() / max(tot.sum(), 1e-12))
    return float(np.mean(1.0 - res / np.maximum(tot, 1e-12)))
