"""Fused Triton kernels for the bilinear lookup of points in a multi-resolution stack of 2D planes.

The same maths as :func:`nerf.encoders.plane_features_torch` (``F.grid_sample`` with
``mode="bilinear"``, ``padding_mode="border"``, ``align_corners=True``), for all levels and planes
in one launch per pass:

* The L levels ``[P, F, R_l, R_l]`` are packed into one flat fp32 buffer, channels last
  (``[P, R_l, R_l, F]`` per level, so the F features of a texel are contiguous), with each level's
  start (``offsets``, int64) and side (``res``, int32) in two small tensors.
* Forward: one program per (block of points, plane), looping over the levels; the coordinates are
  read once per program.
* Backward: the same grid. Plane gradients are atomic adds into a flat fp32 buffer (split and
  viewed back per level afterwards); coordinate gradients are summed over the levels in registers
  (no atomics, deterministic).

Borders follow ``grid_sample``: a coordinate is unnormalised to ``i = (c + 1) / 2 * (R - 1)`` and
clamped to ``[0, R - 1]``; its gradient is zero where ``i <= 0`` or ``i >= R - 1`` (torch counts
the border itself as outside, so points exactly at -1 or 1 get a zero gradient for that axis, like
``grid_sample``). The one difference: a NaN coordinate is clamped like a number here, not
propagated as NaN.

All arithmetic is fp32; set ``TRITON_INTERPRET=1`` before this module is imported to run the
kernels on CPU tensors with Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_N = 128
"""Points per program."""
LAUNCH_OPTIONS: dict[str, Any] = {"num_warps": 4, "enable_fp_fusion": False}
"""Launch options of both kernels (no FMA contraction: rounding as written, closest to ``grid_sample``)."""


@triton.jit
def _block_setup(coords_ptr, p, N, P, L, F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """The points of this program's block on plane ``p``: their mask, the feature lanes and the (point, feature)
    mask, where their coordinates lie and their values ``u, v``, and the start of each point's output row."""
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n_mask = n < N
    f = tl.arange(0, F_PAD)
    mask = n_mask[:, None] & (f < F)[None, :]
    c_idx = (p.to(tl.int64) * N + n) * 2
    u = tl.load(coords_ptr + c_idx, mask=n_mask, other=0.0)
    v = tl.load(coords_ptr + c_idx + 1, mask=n_mask, other=0.0)
    out_row = n.to(tl.int64) * (L * P * F)
    return n_mask, f, mask, c_idx, u, v, out_row


@triton.jit
def _corner_setup(u, v, R, p, offset, F: tl.constexpr):
    """Bilinear corners and weights of coordinates ``u, v [BLOCK_N]`` in a plane of side ``R``."""
    scale = (R - 1).to(tl.float32) * 0.5
    hi = (R - 1).to(tl.float32)
    ix_raw = (u + 1.0) * scale
    iy_raw = (v + 1.0) * scale
    ix = tl.minimum(tl.maximum(ix_raw, 0.0), hi)
    iy = tl.minimum(tl.maximum(iy_raw, 0.0), hi)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    wx1 = ix - x0f
    wy1 = iy - y0f
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = tl.minimum(x0 + 1, R - 1)  # only where wx1 == 0 (ix == R - 1) does the clamp change x1
    y1 = tl.minimum(y0 + 1, R - 1)
    base = offset + (p * R * R).to(tl.int64) * F  # int64: start of plane p of this level
    i00 = base + ((y0 * R + x0) * F).to(tl.int64)
    i01 = base + ((y0 * R + x1) * F).to(tl.int64)
    i10 = base + ((y1 * R + x0) * F).to(tl.int64)
    i11 = base + ((y1 * R + x1) * F).to(tl.int64)
    # grid_sample's clip_coordinates_set_grad: the border counts as outside (gradient 0).
    gx_scale = tl.where((ix_raw > 0.0) & (ix_raw < hi), scale, 0.0)
    gy_scale = tl.where((iy_raw > 0.0) & (iy_raw < hi), scale, 0.0)
    return i00, i01, i10, i11, wx0, wx1, wy0, wy1, gx_scale, gy_scale


@triton.jit
def _planes_fwd_kernel(
    planes_ptr, coords_ptr, offsets_ptr, res_ptr, out_ptr,
    N, P, L,
    F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """``out [N, L * P * F]`` from ``planes`` (flat, channels last) at ``coords [P, N, 2]``."""
    p = tl.program_id(1)
    n_mask, f, mask, c_idx, u, v, out_row = _block_setup(coords_ptr, p, N, P, L, F, F_PAD, BLOCK)
    for level in range(L):
        offset = tl.load(offsets_ptr + level)
        R = tl.load(res_ptr + level)
        i00, i01, i10, i11, wx0, wx1, wy0, wy1, _, _ = _corner_setup(u, v, R, p, offset, F)
        v00 = tl.load(planes_ptr + i00[:, None] + f[None, :], mask=mask, other=0.0)
        v01 = tl.load(planes_ptr + i01[:, None] + f[None, :], mask=mask, other=0.0)
        v10 = tl.load(planes_ptr + i10[:, None] + f[None, :], mask=mask, other=0.0)
        v11 = tl.load(planes_ptr + i11[:, None] + f[None, :], mask=mask, other=0.0)
        top = v00 * wx0[:, None] + v01 * wx1[:, None]
        bottom = v10 * wx0[:, None] + v11 * wx1[:, None]
        val = top * wy0[:, None] + bottom * wy1[:, None]
        col = (level * P + p) * F
        tl.store(out_ptr + out_row[:, None] + col + f[None, :], val, mask=mask)


@triton.jit
def _planes_bwd_kernel(
    planes_ptr, coords_ptr, offsets_ptr, res_ptr, grad_out_ptr, grad_planes_ptr, grad_coords_ptr,
    N, P, L,
    F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr,
    NEED_PLANES: tl.constexpr, NEED_COORDS: tl.constexpr,
):
    """Gradients of the forward pass: atomics into ``grad_planes`` (flat), ``grad_coords [P, N, 2]``."""
    p = tl.program_id(1)
    n_mask, f, mask, c_idx, u, v, out_row = _block_setup(coords_ptr, p, N, P, L, F, F_PAD, BLOCK)
    gu = tl.zeros([BLOCK], dtype=tl.float32)
    gv = tl.zeros([BLOCK], dtype=tl.float32)
    for level in range(L):
        offset = tl.load(offsets_ptr + level)
        R = tl.load(res_ptr + level)
        i00, i01, i10, i11, wx0, wx1, wy0, wy1, gx_scale, gy_scale = _corner_setup(u, v, R, p, offset, F)
        col = (level * P + p) * F
        g = tl.load(grad_out_ptr + out_row[:, None] + col + f[None, :], mask=mask, other=0.0)
        if NEED_PLANES:
            gy0 = g * wy0[:, None]
            gy1 = g * wy1[:, None]
            tl.atomic_add(grad_planes_ptr + i00[:, None] + f[None, :], gy0 * wx0[:, None], mask=mask, sem="relaxed")
            tl.atomic_add(grad_planes_ptr + i01[:, None] + f[None, :], gy0 * wx1[:, None], mask=mask, sem="relaxed")
            tl.atomic_add(grad_planes_ptr + i10[:, None] + f[None, :], gy1 * wx0[:, None], mask=mask, sem="relaxed")
            tl.atomic_add(grad_planes_ptr + i11[:, None] + f[None, :], gy1 * wx1[:, None], mask=mask, sem="relaxed")
        if NEED_COORDS:
            v00 = tl.load(planes_ptr + i00[:, None] + f[None, :], mask=mask, other=0.0)
            v01 = tl.load(planes_ptr + i01[:, None] + f[None, :], mask=mask, other=0.0)
            v10 = tl.load(planes_ptr + i10[:, None] + f[None, :], mask=mask, other=0.0)
            v11 = tl.load(planes_ptr + i11[:, None] + f[None, :], mask=mask, other=0.0)
            d_ix = (v01 - v00) * wy0[:, None] + (v11 - v10) * wy1[:, None]
            d_iy = (v10 - v00) * wx0[:, None] + (v11 - v01) * wx1[:, None]
            gu += tl.sum(g * d_ix, axis=1) * gx_scale
            gv += tl.sum(g * d_iy, axis=1) * gy_scale
    if NEED_COORDS:
        tl.store(grad_coords_ptr + c_idx, gu, mask=n_mask)
        tl.store(grad_coords_ptr + c_idx + 1, gv, mask=n_mask)


def interpreting() -> bool:
    """Whether the kernels were decorated under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return not isinstance(_planes_fwd_kernel, triton.runtime.jit.JITFunction)


def _pack(planes: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """All levels in one flat fp32 buffer, channels last.

    Args:
        planes: L tensors ``[P, F, R_l, R_l]``.

    Returns:
        ``flat [sum_l P * R_l * R_l * F]`` (fp32), ``offsets [L]`` (int64, where each level starts in
        ``flat``) and ``res [L]`` (int32, ``R_l``), all on the planes' device.
    """
    device = planes[0].device
    flat = torch.cat([p.detach().permute(0, 2, 3, 1).reshape(-1) for p in planes]).to(torch.float32).contiguous()
    sizes = [p.numel() for p in planes]
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    offsets = torch.tensor(starts, dtype=torch.int64, device=device)
    res = torch.tensor([p.shape[-1] for p in planes], dtype=torch.int32, device=device)
    return flat, offsets, res


def _check(planes: Sequence[Tensor], coords: Tensor) -> tuple[int, int, int]:
    """Validate shapes and devices; returns ``(P, F, N)``."""
    if len(planes) == 0:
        raise ValueError("plane_features_triton needs at least one level of planes")
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must be [P, N, 2], got {tuple(coords.shape)}")
    n_planes, n_features = planes[0].shape[0], planes[0].shape[1]
    for level, plane in enumerate(planes):
        if plane.dim() != 4 or plane.shape[:2] != (n_planes, n_features) or plane.shape[2] != plane.shape[3]:
            raise ValueError(f"level {level}: planes must all be [P={n_planes}, F={n_features}, R, R], "
                             f"got {tuple(plane.shape)}")
        if plane.device != coords.device:
            raise ValueError(f"level {level}: planes on {plane.device}, coords on {coords.device}")
    if coords.shape[0] != n_planes:
        raise ValueError(f"coords has {coords.shape[0]} planes, the planes have {n_planes}")
    if not coords.is_cuda and not interpreting():
        raise RuntimeError("the triton encoder backend needs a CUDA device (or TRITON_INTERPRET=1 set before "
                           "nerf.kernels.triton_planes is imported, to run Triton's interpreter on CPU); "
                           f"coords are on {coords.device}: use backend='torch'")
    return n_planes, n_features, coords.shape[1]


class PlaneFeatures(torch.autograd.Function):
    """Autograd wrapper of the fused kernels; ``apply(coords, *planes)``."""

    @staticmethod
    def forward(ctx: Any, coords: Tensor, *planes: Tensor) -> Tensor:
        """``coords [P, N, 2]``, L planes ``[P, F, R_l, R_l]`` -> ``[N, L * P * F]``."""
        n_planes, n_features, n_points = _check(planes, coords)
        n_levels = len(planes)
        flat, offsets, res = _pack(planes)
        coords32 = coords.detach().to(torch.float32).contiguous()
        out = torch.empty(n_points, n_levels * n_planes * n_features, dtype=torch.float32, device=coords.device)
        if n_points > 0:
            grid = (triton.cdiv(n_points, BLOCK_N), n_planes)
            _planes_fwd_kernel[grid](
                flat, coords32, offsets, res, out, n_points, n_planes, n_levels,
                F=n_features, F_PAD=triton.next_power_of_2(n_features), BLOCK=BLOCK_N, **LAUNCH_OPTIONS,
            )
        ctx.save_for_backward(flat, coords32, offsets, res)
        ctx.plane_meta = [(p.shape, p.dtype) for p in planes]
        ctx.coords_dtype = coords.dtype
        return out.to(torch.promote_types(planes[0].dtype, coords.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        """``grad_out [N, L * P * F]`` -> gradients w.r.t. ``coords`` and each level's planes."""
        flat, coords32, offsets, res = ctx.saved_tensors
        need_coords = bool(ctx.needs_input_grad[0])
        need_planes = any(ctx.needs_input_grad[1:])
        n_planes, n_points = coords32.shape[0], coords32.shape[1]
        n_features = ctx.plane_meta[0][0][1]
        n_levels = len(ctx.plane_meta)
        grad_flat = torch.zeros_like(flat) if need_planes else flat
        grad_coords = torch.zeros_like(coords32) if need_coords else coords32
        if n_points > 0 and (need_planes or need_coords):
            grid = (triton.cdiv(n_points, BLOCK_N), n_planes)
            _planes_bwd_kernel[grid](
                flat, coords32, offsets, res, grad_out.to(torch.float32).contiguous(), grad_flat, grad_coords,
                n_points, n_planes, n_levels,
                F=n_features, F_PAD=triton.next_power_of_2(n_features), BLOCK=BLOCK_N,
                NEED_PLANES=need_planes, NEED_COORDS=need_coords, **LAUNCH_OPTIONS,
            )
        grads: list[Tensor | None] = [grad_coords.to(ctx.coords_dtype) if need_coords else None]
        start = 0
        for level, (shape, dtype) in enumerate(ctx.plane_meta):
            size = shape.numel()
            if need_planes and ctx.needs_input_grad[1 + level]:
                p, f, r, _ = shape
                grad = grad_flat[start:start + size].view(p, r, r, f).permute(0, 3, 1, 2)
                grads.append(grad.to(dtype).contiguous())
            else:
                grads.append(None)
            start += size
        return tuple(grads)


def plane_features_triton(planes: Sequence[Tensor], coords: Tensor) -> Tensor:
    """Bilinear lookup of points in a multi-resolution stack of planes (fused Triton kernels).

    Args:
        planes: L tensors ``[P, F, R_l, R_l]``: P planes of F features per level.
        coords: ``[P, N, 2]`` in [-1, 1]; ``coords[p, :, 0]`` indexes the width of plane p.

    Returns:
        ``[N, L * P * F]`` ordered level, then plane, then feature; differentiable w.r.t. both the
        planes and the coordinates.

    Raises:
        RuntimeError: ``coords`` are on the CPU and Triton's interpreter is off.
    """
    out: Tensor = PlaneFeatures.apply(coords, *planes)
    return out
