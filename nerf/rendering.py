"""Ray sampling with a maximum occupancy grid, volume compositing and marching, and whole-image rendering in chunks.

The occupancy grid holds, per cell of the head box, the largest density seen over the audio and eye
conditions of the training frames (decayed over time, so stale maxima fade). Sampling places at most
``samples_per_ray`` samples per ray, spread evenly over the ray's occupied length only; a ray that
crosses no occupied cell costs nothing and shows the background.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class OccupancyGridConfig:
    """The maximum occupancy grid over the head box."""

    resolution: int = 64
    """Cells per side."""
    update_every: int = 16
    """Training steps between updates."""
    decay: float = 0.95
    """Density kept from the previous maximum at each update."""
    alpha_threshold: float = 0.01
    """A cell is occupied when a ray crossing it would have at least this alpha."""
    cells_per_update: int = 1 << 18
    """Cells evaluated per update (all of them when the grid has fewer); the others keep their decayed value."""


@dataclass(frozen=True)
class SamplerConfig:
    """Samples along rays."""

    samples_per_ray: int = 16
    """At most this many samples per ray (RAD-NeRF: 16)."""
    candidates: int = 64
    """Positions per ray tested against the occupancy grid to find the occupied length."""
    stop_transmittance: float = 1e-4
    """Early ray termination when rendering without gradients or jitter (evaluation, render jobs): rays are
    marched ``march_group`` samples at a time and stop once the light left to reach their next sample falls
    below this (each pixel then differs from evaluating every sample by less than this); 0 evaluates every
    sample. Training always evaluates every sample."""
    march_group: int = 2
    """Samples per ray evaluated per marching round (see ``stop_transmittance``): 2 was the fastest of 1-8 on the
    CPU, 2.1-2.4x faster than evaluating every sample, with frames within 1/255 of the full pass (measurements:
    docs/decisions.md, 'RAD-NeRF defaults', march_group)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.stop_transmittance < 1.0:
            raise ValueError(f"stop_transmittance must be in [0, 1), got {self.stop_transmittance}")
        if self.march_group < 1:
            raise ValueError(f"march_group must be >= 1, got {self.march_group}")


class OccupancyGrid(nn.Module):
    """A density grid over ``[-bound, bound]^3`` and its occupancy mask."""

    density: Tensor
    """[R, R, R] decayed maximum density per cell."""
    mask: Tensor
    """bool [R, R, R] occupied cells."""
    updates: Tensor
    """int64 [] updates so far."""

    def __init__(self, config: OccupancyGridConfig, bound: float):
        super().__init__()
        self.config = config
        self.bound = bound
        r = config.resolution
        self.register_buffer("density", torch.zeros((r, r, r)))  # every cell occupied until the first update
        self.register_buffer("mask", torch.ones((r, r, r), dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.cell = 2 * bound / r

    def _index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """World points [N, 3] -> flat cell index [N] and inside-box flag [N]."""
        r = self.config.resolution
        u = (x / self.bound + 1) * 0.5 * r
        inside = ((u >= 0) & (u < r)).all(-1)
        i = u.long().clamp(0, r - 1)
        return (i[:, 0] * r + i[:, 1]) * r + i[:, 2], inside

    def occupied(self, x: Tensor) -> Tensor:
        """bool [N]: the cells of world points [N, 3] are occupied (points outside the box are not)."""
        idx, inside = self._index(x)
        return self.mask.view(-1)[idx] & inside

    def occupied_along(self, origins: Tensor, directions: Tensor, t_first: Tensor, step: Tensor, n: int) -> Tensor:
        """bool [R, n]: the cells of the points ``t_first + k * step`` (k < n) along rays [R, 3] are occupied.

        The same test as :meth:`occupied` on those points (up to float rounding on cell borders), for points
        inside the box (a ray's candidates between its entry and exit, which :func:`sample_rays` passes): the
        positions are stepped in grid units and the three coordinates laid out apart, so each is a contiguous
        pass, in int32, 5-6x faster than :meth:`occupied` on the points on the CPU (measurements:
        docs/decisions.md, 'RAD-NeRF defaults', occupied_along). Points outside the box take the nearest border
        cell instead of counting as free.
        """
        r = self.config.resolution
        scale = 0.5 * r / self.bound
        u0 = ((origins + directions * t_first[:, None]) * scale + 0.5 * r).T.contiguous()  # [3, R] grid units
        du = (directions * (step * scale)[:, None]).T.contiguous()
        k = torch.arange(n, device=origins.device, dtype=origins.dtype)
        i = torch.addcmul(u0[..., None], du[..., None], k).clamp_(0, r - 1).to(torch.int32)  # [3, R, n]
        return self.mask.view(-1)[i[0].mul_(r).add_(i[1]).mul_(r).add_(i[2])]

    def sigma_threshold(self) -> float:
        """Density above which a cell counts as occupied."""
        return -torch.log1p(torch.tensor(-self.config.alpha_threshold)).item() / self.cell

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator, chunk: int = 1 << 16) -> None:
        """Decay the grid and take the maximum with fresh densities at jittered cell positions.

        Args:
            density_fn: world points [M, 3] -> density [M], each call under conditions of its choice
                (the model draws random training frames).
            generator: random source for which cells and where in them.
            chunk: points per call of ``density_fn``.
        """
        r = self.config.resolution
        n = r**3
        flat = self.density.view(-1)
        flat.mul_(self.config.decay)
        if self.config.cells_per_update >= n:
            cells = torch.arange(n, device=flat.device)
        else:
            cells = torch.randperm(n, generator=generator)[: self.config.cells_per_update].to(flat.device)
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1).float()
        jitter = torch.rand(ijk.shape, generator=generator).to(flat.device)
        x = ((ijk + jitter) / r * 2 - 1) * self.bound
        for s in range(0, x.shape[0], chunk):
            sig = density_fn(x[s : s + chunk]).float()
            idx = cells[s : s + chunk]
            flat[idx] = torch.maximum(flat[idx], sig)
        thr = flat.mean().clamp(max=self.sigma_threshold())  # a tensor: on a GPU the update never waits for it
        self.mask.copy_(self.density > thr)
        self.updates += 1

    def occupancy(self) -> float:
        """Fraction of occupied cells."""
        return float(self.mask.float().mean())


def box_intersection(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances [R] of rays with the box ``[-bound, bound]^3`` (exit <= entry: a miss)."""
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


@dataclass
class RaySamples:
    """Samples of the rays that cross occupied space."""

    ray: Tensor
    """int64 [R'] which input ray each row belongs to."""
    t: Tensor
    """[R', S] distances of the samples along the ray."""
    delta: Tensor
    """[R', 1] length each sample stands for (the occupied length / S)."""
    points: Tensor
    """[R', S, 3] world positions."""


def sample_rays(origins: Tensor, directions: Tensor, near: float | Tensor, far: float | Tensor, grid: OccupancyGrid,
                config: SamplerConfig, generator: torch.Generator | None = None) -> RaySamples:
    """Place up to ``config.samples_per_ray`` samples on each ray, in its occupied cells only.

    Candidates at the midpoints of ``config.candidates`` equal steps between the ray's entry and exit
    (of the head box, clipped to [near, far]) find the occupied steps; the samples are then spread
    evenly over those steps by inverse transform sampling of a piecewise-constant density.

    Args:
        origins, directions: [R, 3] world rays (unit directions).
        near, far: the identity's depth bounds, or each ray's ([R]: rays of several people).
        grid: the occupancy grid.
        config: sample counts.
        generator: stratified jitter for training; ``None`` samples at the strata's midpoints (evaluation).

    Returns:
        The samples of the rays with any occupied step (possibly none).
    """
    t_in, t_out = box_intersection(origins, directions, grid.bound)
    t_in = t_in.clamp(min=near)
    t_out = t_out.clamp(max=far)
    m, s = config.candidates, config.samples_per_ray
    step = (t_out - t_in).clamp(min=0.0) / m  # [R]
    # every ray is tested and those that miss the box are masked out, so that the rays are compacted once (one wait
    # for the device on a GPU, not two): rays at these crops nearly all cross the box
    occ = grid.occupied_along(origins, directions, t_in + 0.5 * step, step, m) & (t_out > t_in)[:, None]  # [R, M]
    hit = torch.nonzero(occ.any(-1)).squeeze(-1)
    o, d, t_in, step, occ = origins[hit], directions[hit], t_in[hit], step[hit], occ[hit]
    cum = occ.float().cumsum(-1)  # [R', M]
    total = cum[:, -1:]  # occupied steps
    if generator is None:
        jitter = torch.full((hit.shape[0], s), 0.5, device=o.device)
    else:
        jitter = torch.rand((hit.shape[0], s), generator=generator).to(o.device)
    u = (torch.arange(s, device=o.device) + jitter) / s * total  # [R', S] in [0, total)
    j = torch.searchsorted(cum, u, right=True).clamp(max=m - 1)  # the occupied step holding u
    frac = u - (cum.gather(-1, j) - 1.0)  # position inside that step, in [0, 1)
    t = t_in[:, None] + (j.float() + frac) * step[:, None]
    delta = total * step[:, None] / s
    points = o[:, None] + d[:, None] * t[..., None]
    return RaySamples(ray=hit, t=t, delta=delta, points=points)


def composite(sigma: Tensor, rgb: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Volume rendering of samples along rays.

    Args:
        sigma: [R, S] densities.
        rgb: [R, S, 3] colours.
        delta: [R, 1] or [R, S] sample lengths.

    Returns:
        weights [R, S], colour [R, 3] (premultiplied by alpha: add ``(1 - acc) * background``), accumulated
        alpha [R].
    """
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans
    return weights, (weights[..., None] * rgb).sum(1), weights.sum(1)


def march(samples: RaySamples, field: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor | None]],
          stop: float, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """Composite ``samples`` front to back, ``group`` samples per ray at a time, evaluating the field only for rays
    whose transmittance is still at least ``stop`` (early ray termination; for rendering without gradients).

    Args:
        samples: the rays' samples (:func:`sample_rays`).
        field: ``(points [L*G, 3], live rows [L] of the samples, G) -> (sigma [L*G], rgb [L*G, 3], extra [L*G] or
            None)``: the field at the next ``G`` samples of the ``L`` live rays, and optionally a per-sample value
            to accumulate with the compositing weights (e.g. the size of an audio coordinate).

    Returns:
        colour [R', 3] (premultiplied), alpha [R'] and the weighted sum of ``extra`` [R'] (zeros without it), one
        row per ray of ``samples``.
    """
    n_rays, s = samples.t.shape
    dev = samples.t.device
    rgb = torch.zeros(n_rays, 3, device=dev)
    acc = torch.zeros(n_rays, device=dev)
    extra = torch.zeros(n_rays, device=dev)
    trans = torch.ones(n_rays, device=dev)
    delta = samples.delta.expand(n_rays, s)
    live = torch.arange(n_rays, device=dev)
    for k in range(0, s, group):
        if not live.numel():
            break
        pts = samples.points[live, k : k + group]  # [L, G, 3]
        n_live, gk = pts.shape[:2]
        sigma, colour, ext = field(pts.reshape(-1, 3), live, gk)
        w, c, a = composite(sigma.view(n_live, gk), colour.view(n_live, gk, 3), delta[live, k : k + group])
        t_live = trans[live]
        rgb.index_add_(0, live, c * t_live[:, None])
        acc.index_add_(0, live, a * t_live)
        if ext is not None:
            extra.index_add_(0, live, (w * ext.view(n_live, gk)).sum(-1) * t_live)
        t_live = t_live * (1.0 - a).clamp(min=0.0)  # the light left after the group
        trans[live] = t_live
        live = live[t_live >= stop]
    return rgb, acc, extra


def gather(tensors: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
    """The rows ``index`` (int64 [N], repeats allowed) of each tensor. ``index_select``, not ``t[index]``: on the CPU
    the latter's backward adds the repeated rows' gradients with atomics, in a different order each run (so
    training was not bit-reproducible), and is 2.5-5x slower."""
    return tuple(t.index_select(0, index) for t in tensors)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; its previous mode back after it, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


CPU_CHUNK = 1 << 15
"""Rays per forward pass when rendering on the CPU: the fastest of 4096-65536 for 512 px frames on 2 cores
(measurements: docs/decisions.md, 'RAD-NeRF defaults', rays per chunk)."""
CUDA_CHUNK = 1 << 18
"""Rays per forward pass when rendering on a GPU: a whole 512 px frame, since small chunks make a GPU frame
launch-bound (about 2.6 KB of working memory per ray; measurements: docs/decisions.md, 'RAD-NeRF defaults', rays
per chunk)."""


def default_chunk(device: torch.device | str) -> int:
    """Rays per forward pass for rendering on ``device``: :data:`CUDA_CHUNK` on CUDA, :data:`CPU_CHUNK` elsewhere."""
    return CUDA_CHUNK if torch.device(device).type == "cuda" else CPU_CHUNK


@torch.no_grad()
def render_image(render_rays: Callable[[slice], Tensor], n_rays: int, size: int, device: torch.device | str,
                 chunk: int | None = None) -> Tensor:
    """Render the ``n_rays`` rays of one ``size`` x ``size`` frame in chunks: ``render_rays(rows)`` gives the colours
    [len, 3] of a slice of them. Returns [S, S, 3] in [0, 1]."""
    if chunk is None:
        chunk = default_chunk(device)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 rays, got {chunk}")
    parts = [render_rays(slice(i, i + chunk)) for i in range(0, n_rays, chunk)]
    return torch.cat(parts).clamp(0, 1).view(size, size, 3)
