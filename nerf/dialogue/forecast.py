"""DialogueNeRF's motion forecasters (paper IV-A, spec 1.3-B): a dilated causal TCN (Bai et al.) that predicts a
person's next state (a 6-D head pose, or a listener's expression) from what is known at that frame (the audio's
rhythm, who speaks, the partner's last pose) and its own history, run autoregressively at render time.

The TCN outputs a Laplace distribution of the step from the last state (its location and scale per dimension):
the negative log-likelihood trains it (an L1 with a learnt scale), and sampling from it at render time keeps the
motion alive where the mean step would collapse to a still head. Scheduled sampling (:class:`ForecastTrain`) feeds
the model's own predictions back as history during training, so that at render time its errors do not compound
into drift. Everything here works on normalised arrays; the caller builds the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass(frozen=True)
class ForecastConfig:
    """The TCN's shape (spec 1.3-B defaults: 6 levels, kernel 3, 64 channels, causal)."""

    levels: int = 6
    """Residual blocks; block k dilates by 2^k."""
    kernel: int = 3
    channels: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.levels < 1 or self.kernel < 2 or self.channels < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"forecast TCN: invalid {self} (levels >= 1, kernel >= 2, channels >= 1, "
                             "dropout in [0, 1))")

    @property
    def receptive_field(self) -> int:
        """Frames one output sees: 1 + 2 (k - 1) (2^L - 1) (253 at the defaults, ~10 s at 25 fps)."""
        return 1 + 2 * (self.kernel - 1) * (2**self.levels - 1)


@dataclass(frozen=True)
class ForecastTrain:
    """How a forecaster is trained (before the field, in the trial)."""

    steps: int = 800
    batch: int = 16
    window: int = 128
    """Frames per training window (shorter sequences are padded at the start and masked), and so the history
    generation feeds the model (:attr:`Forecaster.context`). Shorter than the receptive field (253 at the
    defaults), so steps cost a third of 32 x 256's (~0.1 s on 2 cores: both forecasters train in ~3 min of a
    30-min budget)."""
    lr: float = 1e-3
    """Adam's rate (the paper: 5e-5 for 200 epochs of its 2200 s; a few minutes of frames need fewer, larger steps)."""
    sampled_passes: int = 2
    """Scheduled sampling: extra passes in which part of the history is the model's own prediction."""
    sampled_share: float = 0.5
    """Share of history frames replaced by predictions at the end of training (rising linearly from 0)."""
    history_noise: float = 0.05
    """Std of Gaussian noise on the (normalised) history: the model learns to pull a wrong history back."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.window < 2 or self.lr <= 0 or self.sampled_passes < 0 \
                or not 0 <= self.sampled_share <= 1 or self.history_noise < 0:
            raise ValueError(f"forecast training: invalid {self}")


class CausalBlock(nn.Module):
    """Two dilated causal convolutions (weight norm, ReLU, dropout) with a residual connection."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(c_out, c_out, kernel, dilation=dilation))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
        h = self.drop(torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0)))))
        return torch.relu(h + self.skip(x))


class Forecaster(nn.Module):
    """``cond`` [B, T, C] (known at each frame) and ``history`` [B, T, D] (the state one frame before) -> the
    Laplace location and log-scale [B, T, D] each of the step from ``history`` to the frame's state."""

    context: Tensor
    """Frames of history the model was trained on (its training window; 0: the receptive field): generation feeds
    it no more, so that every frame it sees is as in training (the convolutions' zero padding beyond the window)."""
    noise_rho: Tensor
    """[D] lag-1 autocorrelation of the training residuals (:func:`residual_correlation`): the rollout's draws
    follow it, so that what the location misses comes back as slow sway, not as frame-to-frame jitter."""

    def __init__(self, cond_dim: int, state_dim: int, config: ForecastConfig):
        super().__init__()
        self.cond_dim, self.state_dim, self.config = cond_dim, state_dim, config
        c = config
        blocks = [CausalBlock(cond_dim + state_dim if k == 0 else c.channels, c.channels, c.kernel, 2**k, c.dropout)
                  for k in range(c.levels)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv1d(c.channels, 2 * state_dim, 1, bias=False)
        with torch.no_grad():  # start from "no step, unit scale"
            self.out.weight.zero_()
        self.register_buffer("noise_rho", torch.zeros(state_dim))
        self.register_buffer("context", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # saved before they existed: white draws, the whole receptive field
        state_dict.setdefault(prefix + "noise_rho", torch.zeros(self.state_dim))
        state_dict.setdefault(prefix + "context", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def history_frames(self) -> int:
        """Frames of history to feed it: its training window, at most its receptive field."""
        rf = self.config.receptive_field
        return min(int(self.context), rf) if int(self.context) > 0 else rf

    def forward(self, cond: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        h = self.blocks(torch.cat([cond, history], -1).transpose(1, 2))
        loc, log_scale = self.out(h).transpose(1, 2).chunk(2, -1)
        return loc, log_scale.clamp(-6.0, 3.0)


def laplace_nll(loc: Tensor, log_scale: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``target`` under Laplace(loc, exp(log_scale)) over ``mask`` [B, T] frames."""
    nll = (target - loc).abs() * torch.exp(-log_scale) + log_scale
    w = mask[..., None].to(nll.dtype)
    return (nll * w).sum() / (w.sum() * nll.shape[-1]).clamp_min(1.0)


@dataclass
class Sequences:
    """Training sequences of one kind of state, each [T_i, ...] (normalised)."""

    cond: list[np.ndarray]
    """[T_i, C] what is known at each frame."""
    state: list[np.ndarray]
    """[T_i, D] the state at each frame."""

    def __post_init__(self) -> None:
        if len(self.cond) != len(self.state) or any(len(c) != len(s) for c, s in zip(self.cond, self.state,
                                                                                      strict=True)):
            raise ValueError("forecast sequences: cond and state must pair up, frame for frame")


def _windows(seqs: Sequences, batch: int, window: int, rng: np.random.Generator
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A batch of random windows: cond [B, W, C], state [B, W, D], the state one frame earlier [B, W, D] and the
    mask of real frames [B, W] (a short sequence is padded at the start with its first frame)."""
    lengths = np.array([len(s) for s in seqs.state])
    pick = rng.choice(len(lengths), batch, p=lengths / lengths.sum())
    c_dim, d_dim = seqs.cond[0].shape[1], seqs.state[0].shape[1]
    cond = np.zeros((batch, window + 1, c_dim), np.float32)
    state = np.zeros((batch, window + 1, d_dim), np.float32)
    mask = np.zeros((batch, window + 1), bool)
    for b, i in enumerate(pick):
        n = lengths[i]
        take = min(n, window + 1)
        s = int(rng.integers(0, n - take + 1))
        cond[b, -take:], state[b, -take:], mask[b, -take:] = seqs.cond[i][s:s + take], seqs.state[i][s:s + take], True
        cond[b, :-take], state[b, :-take] = seqs.cond[i][s], seqs.state[i][s]
        mask[b, -take] = False  # a window's first real frame has no real history
    t = torch.from_numpy
    return t(cond[:, 1:]), t(state[:, 1:]), t(state[:, :-1]), t(mask[:, 1:])


def train_forecaster(seqs: Sequences, config: ForecastConfig, train: ForecastTrain, seed: int = 0) -> Forecaster:
    """Train a forecaster on sequences (the frames of each must be consecutive) and return it in eval mode.

    Raises:
        ValueError: no sequence of at least two frames.
    """
    keep = [i for i, s in enumerate(seqs.state) if len(s) >= 2]
    if not keep:
        raise ValueError("forecaster: no training sequence of two frames or more")
    seqs = Sequences([seqs.cond[i] for i in keep], [seqs.state[i] for i in keep])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Forecaster(seqs.cond[0].shape[1], seqs.state[0].shape[1], config)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(train.steps, 1), eta_min=train.lr * 0.1)
    window = min(train.window, max(len(s) for s in seqs.state) - 1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(train.steps):
        cond, state, prev, mask = _windows(seqs, train.batch, window, rng)
        share = train.sampled_share * step / max(train.steps - 1, 1)
        history = prev + train.history_noise * torch.randn(prev.shape, generator=gen)
        loss = torch.zeros(())
        for k in range(1 + train.sampled_passes):
            loc, log_scale = model(cond, history)
            loss = loss + laplace_nll(loc, log_scale, state - history, mask)
            if k == train.sampled_passes:
                break
            with torch.no_grad():  # the model's own state at t-1 becomes the history of frame t, where drawn
                own = torch.cat([history[:, :1], (history + loc)[:, :-1]], 1)
                use = torch.rand(mask.shape, generator=gen) < share
                history = torch.where(use[..., None], own, history)
        opt.zero_grad()
        (loss / (1 + train.sampled_passes)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    model.context.fill_(window)
    model.noise_rho.copy_(residual_correlation(model, seqs))
    return model


@torch.no_grad()
def residual_correlation(model: Forecaster, seqs: Sequences) -> Tensor:
    """[D] lag-1 autocorrelation, per dimension, of the standardised residuals (step - location) / scale of
    ``model`` over the sequences under their real history (cut into pieces of :attr:`Forecaster.history_frames`,
    as it saw them in training), pooled over them and kept in [0, 0.99] (a negative one would only add jitter)."""
    pairs = []
    span = model.history_frames + 1
    for cond_all, state_all in zip(seqs.cond, seqs.state, strict=True):
        for a in range(0, len(state_all), span):
            state, cond = state_all[a:a + span], cond_all[a:a + span]
            if len(state) < 3:
                continue
            st = torch.from_numpy(np.asarray(state, np.float32))
            loc, log_scale = model(torch.from_numpy(np.asarray(cond, np.float32))[None, 1:], st[None, :-1])
            z = ((st[1:] - st[:-1]) - loc[0]) * torch.exp(-log_scale[0])
            pairs.append(torch.stack([z[1:], z[:-1]]))  # [2, T-2, D]
    if not pairs:
        return torch.zeros(model.state_dim)
    a, b = torch.cat(pairs, 1)
    a, b = a - a.mean(0), b - b.mean(0)
    rho = (a * b).sum(0) / ((a.square().sum(0) * b.square().sum(0)).sqrt() + 1e-9)
    return rho.clamp(0.0, 0.99)


@torch.no_grad()
def rollout(models: list[Forecaster], cond_fn, seeds: list[np.ndarray], n: int,  # noqa: ANN001
            generator: torch.Generator, temperature: float = 1.0,
            bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Run forecasters autoregressively, several streams in step (e.g. both people of a conversation).

    Args:
        models: one forecaster per stream (the same one may serve several).
        cond_fn: ``(t, states [S, D] at t-1) -> cond [S, C]`` at frame t (it may read the other streams' states).
        seeds: per stream, [w, D] the history before frame 0 (at least one frame).
        n: frames to generate.
        generator: the draws of the steps.
        temperature: scale of the sampled deviation from the step's location (0: the location alone); the
            deviations are Laplace draws correlated in time as each model's ``noise_rho`` says.
        bounds: (low [S, D], high [S, D]): a state leaving them is pulled back to them (a safety net; the model
            itself is trained to stay near the data).

    Returns:
        float32 [n, S, D] the generated states.
    """
    s_count = len(models)
    rf = max(m.history_frames for m in models)
    hist = [torch.as_tensor(np.asarray(sd, np.float32)).reshape(-1, models[k].state_dim)
            for k, sd in enumerate(seeds)]
    conds: list[list[Tensor]] = [[] for _ in range(s_count)]  # the seed's frames take frame 0's conditions
    out = np.zeros((n, s_count, hist[0].shape[1]), np.float32)
    gauss = [torch.randn(m.state_dim, generator=generator) for m in models]  # each stream's AR(1) draw
    for t in range(n):
        last = np.stack([h[-1].numpy() for h in hist])
        c_t = np.asarray(cond_fn(t, last), np.float32)
        new = []
        for k, m in enumerate(models):
            conds[k].append(torch.from_numpy(c_t[k]))
            h = hist[k][-rf:]
            c = torch.stack(conds[k][-len(h):])
            if len(c) < len(h):
                c = torch.cat([c[:1].expand(len(h) - len(c), -1), c])
            loc, log_scale = m(c[None], h[None])
            rho = m.noise_rho
            gauss[k] = rho * gauss[k] + torch.sqrt(1 - rho.square()) * torch.randn(m.state_dim, generator=generator)
            noise = _laplace_of(gauss[k])
            step = loc[0, -1] + temperature * torch.exp(log_scale[0, -1]) * noise
            new.append(hist[k][-1] + step)
        if bounds is not None:
            lo, hi = (torch.from_numpy(np.asarray(b, np.float32)) for b in bounds)
            new = [torch.maximum(torch.minimum(v, hi[k]), lo[k]) for k, v in enumerate(new)]
        for k, v in enumerate(new):
            hist[k] = torch.cat([hist[k][-rf:], v[None]])
            out[t, k] = v.numpy()
    return out


def _laplace_of(gauss: Tensor) -> Tensor:
    """Standard Laplace draws from standard normal ones (through the uniform of the normal's CDF): a draw keeps
    the Laplace law whatever the normal draws' correlation in time."""
    u = 0.5 * (1 + torch.erf(gauss / np.sqrt(2.0))) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.4999999))
