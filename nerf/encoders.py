"""Input encoders: multi-resolution 2D feature planes (tri-plane for 3D points), frequency encoding, and spherical
harmonics for directions.

All encoders share one interface: an ``nn.Module`` with ``in_dim``, ``out_dim`` and
``forward(x [N, in_dim] in [-1, 1]) -> [N, out_dim]``.

The planes are interpolated by one function with two implementations of the same maths:

* ``torch``: ``F.grid_sample`` on stacked planes, one call per level. Fast on CPU (and the
  reference for the other).
* ``triton``: a fused kernel for all levels and planes on CUDA (:mod:`nerf.kernels`), imported
  lazily; ``auto`` picks it when the input is on a GPU and Triton is installed.

Both read the planes with bilinear interpolation, ``align_corners=True`` (``-1`` and ``1`` are the
centres of the border texels) and clamp outside ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["torch", "triton", "auto"]

TRIPLANE_AXES = ((0, 1), (1, 2), (0, 2))
"""The (u, v) input axes of the xy, yz and xz planes of a tri-plane."""


@dataclass(frozen=True)
class GridEncoderConfig:
    """A multi-resolution stack of 2D feature planes."""

    n_levels: int = 8
    """Resolution levels, from ``base_resolution`` to ``max_resolution`` in a geometric series."""
    features_per_level: int = 2
    """Features per texel of each level (and plane)."""
    base_resolution: int = 16
    """Texels per side of the coarsest level."""
    max_resolution: int = 512
    """Texels per side of the finest level."""
    init_scale: float = 1e-4
    """Texel features start uniform in [-init_scale, init_scale]."""
    backend: Backend = "auto"
    """Interpolation kernel: ``torch``, ``triton`` (CUDA) or ``auto`` (``triton`` on a GPU when installed)."""

    def resolutions(self) -> list[int]:
        """Texels per side of each level."""
        if self.n_levels == 1:
            return [self.base_resolution]
        growth = math.exp(math.log(self.max_resolution / self.base_resolution) / (self.n_levels - 1))
        return [int(round(self.base_resolution * growth**level)) for level in range(self.n_levels)]


@dataclass(frozen=True)
class FrequencyEncoderConfig:
    """NeRF's positional encoding: ``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < n_frequencies."""

    n_frequencies: int = 10
    """Octaves."""
    include_input: bool = True
    """Also pass the input through."""


def plane_features_torch(planes: Sequence[Tensor], coords: Tensor) -> Tensor:
    """Bilinear lookup of points in a multi-resolution stack of planes (reference implementation).

    Args:
        planes: L tensors ``[P, F, R_l, R_l]``: P planes of F features per level.
        coords: ``[P, N, 2]`` in [-1, 1]; ``coords[p, :, 0]`` indexes the width of plane p.

    Returns:
        ``[N, L * P * F]`` ordered level, then plane, then feature.
    """
    grid = coords.unsqueeze(1)  # [P, 1, N, 2]
    out = []
    for plane in planes:
        f = F.grid_sample(plane, grid, mode="bilinear", padding_mode="border", align_corners=True)  # [P, F, 1, N]
        out.append(f[:, :, 0].permute(2, 0, 1).reshape(coords.shape[1], -1))
    return torch.cat(out, dim=-1)


def triton_available() -> bool:
    """Whether the Triton kernels can run here (Triton importable and a CUDA device present)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def plane_features(planes: Sequence[Tensor], coords: Tensor, backend: Backend = "auto") -> Tensor:
    """:func:`plane_features_torch` through the chosen backend.

    Raises:
        RuntimeError: ``backend="triton"`` where Triton or CUDA is missing.
    """
    if backend == "auto":
        backend = "triton" if coords.is_cuda and triton_available() else "torch"
    if backend == "torch":
        return plane_features_torch(planes, coords)
    if backend == "triton":
        from nerf.kernels import plane_features_triton  # lazy: nothing compiles at import

        return plane_features_triton(planes, coords)
    raise ValueError(f"unknown encoder backend {backend!r} (torch, triton or auto)")


class PlaneEncoder(nn.Module):
    """Multi-resolution feature planes over a 2D or 3D input (3D: a tri-plane, the xy, yz and xz planes)."""

    def __init__(self, in_dim: int, config: GridEncoderConfig):
        """Args:
            in_dim: 2 (one plane per level) or 3 (three planes per level).
            config: the planes' layout.
        """
        super().__init__()
        if in_dim not in (2, 3):
            raise ValueError(f"PlaneEncoder takes 2D or 3D inputs, got in_dim={in_dim}")
        self.in_dim = in_dim
        self.config = config
        self.n_planes = 1 if in_dim == 2 else 3
        self.out_dim = config.n_levels * self.n_planes * config.features_per_level
        self.planes = nn.ParameterList(
            nn.Parameter(torch.empty(self.n_planes, config.features_per_level, r, r).uniform_(
                -config.init_scale, config.init_scale))
            for r in config.resolutions()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_dim]`` in [-1, 1] -> ``[N, out_dim]``."""
        coords = x.unsqueeze(0) if self.in_dim == 2 else torch.stack([x[:, list(axes)] for axes in TRIPLANE_AXES])
        return plane_features(list(self.planes), coords.contiguous(), self.config.backend)

    def total_variation(self) -> Tensor:
        """Mean squared difference of neighbouring texels over all levels (a smoothness prior)."""
        tv = [((p[..., 1:, :] - p[..., :-1, :]) ** 2).mean() + ((p[..., :, 1:] - p[..., :, :-1]) ** 2).mean()
              for p in self.planes]
        return torch.stack(tv).mean()


class FrequencyEncoder(nn.Module):
    """NeRF's frequency (positional) encoding; no parameters."""

    bands: Tensor
    """``[n_frequencies]`` angular frequencies ``2^k pi`` (a non-persistent buffer)."""

    def __init__(self, in_dim: int, config: FrequencyEncoderConfig):
        super().__init__()
        self.in_dim = in_dim
        self.config = config
        self.register_buffer("bands", math.pi * 2.0 ** torch.arange(config.n_frequencies), persistent=False)
        self.out_dim = in_dim * (2 * config.n_frequencies + int(config.include_input))

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_dim]`` -> ``[N, out_dim]``."""
        scaled = (x[:, :, None] * self.bands).flatten(1)  # [N, in_dim * n_frequencies]
        parts = [x] if self.config.include_input else []
        return torch.cat([*parts, torch.sin(scaled), torch.cos(scaled)], dim=-1)


def spherical_harmonics(d: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics of unit directions ``d [N, 3]``: the ``degree**2`` functions of bands ``< degree``
    (degree 1-4; orthonormal on the sphere), the direction encoding of instant-ngp and RAD-NeRF's colour net."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree {degree} (1-4)")
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        c = 0.48860251190291987
        out += [-c * y, c * z, -c * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575756 * zz - 0.31539156525252,
                -1.0925484305920792 * x * z, 0.5462742152960396 * (xx - yy)]
    if degree > 3:
        out += [0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
                0.4570457994644658 * y * (5 * zz - 1), 0.3731763325901154 * z * (5 * zz - 3),
                0.4570457994644658 * x * (5 * zz - 1), 1.445305721320277 * z * (xx - yy),
                0.5900435899266435 * x * (xx - 3 * yy)]
    return torch.stack(out, -1)
