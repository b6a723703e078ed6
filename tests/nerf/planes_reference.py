"""Compare the Triton plane lookup with the torch reference (values, plane and coordinate gradients).

Imported by the tests for CUDA, and run as a script for the CPU interpreter, which has to be
switched on before Triton decorates the kernels::

    TRITON_INTERPRET=1 python -m tests.nerf.planes_reference   # last line: JSON {case: {name: error}}
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor

RESOLUTIONS = (4, 7, 16)
"""Texels per side of the three test levels."""
N_POINTS = 200
FEATURES = 2


def make_case(n_planes: int, device: str | torch.device, seed: int = 0) -> tuple[list[Tensor], Tensor, Tensor]:
    """Random planes, coordinates (some outside [-1, 1], some exactly at -1 or 1) and an upstream gradient.

    Returns:
        planes (3 levels ``[P, F, R_l, R_l]``, fp32), ``coords [P, N, 2]`` and ``grad_out [N, 3 * P * F]``.
    """
    gen = torch.Generator().manual_seed(seed)
    planes = [torch.randn(n_planes, FEATURES, r, r, generator=gen) for r in RESOLUTIONS]
    coords = torch.rand(n_planes, N_POINTS, 2, generator=gen) * 2.6 - 1.3  # ~23% of each axis outside [-1, 1]
    signs = torch.tensor([-1.0, 1.0])
    coords[:, :16] = signs[torch.randint(0, 2, (n_planes, 16, 2), generator=gen)]  # both axes on the border
    coords[:, 16:32, 0] = signs[torch.randint(0, 2, (n_planes, 16), generator=gen)]  # x on the border only
    coords[:, 32:48, 1] = signs[torch.randint(0, 2, (n_planes, 16), generator=gen)]  # y on the border only
    coords[:, 48:56] = torch.tensor([0.0, 0.5])  # interior texel centres / edges
    grad_out = torch.randn(N_POINTS, len(RESOLUTIONS) * n_planes * FEATURES, generator=gen)
    return [p.to(device) for p in planes], coords.to(device), grad_out.to(device)


def _lookup_with_grads(fn, planes: list[Tensor], coords: Tensor, grad_out: Tensor) -> list[Tensor]:
    """``[out, d coords, d plane_0, ...]`` of ``fn(planes, coords)`` against ``grad_out``."""
    planes = [p.clone().requires_grad_(True) for p in planes]
    coords = coords.clone().requires_grad_(True)
    out = fn(planes, coords)
    grads = torch.autograd.grad(out, [coords, *planes], grad_out)
    return [out.detach(), *grads]


def compare(n_planes: int, device: str | torch.device) -> dict[str, float]:
    """Errors of the Triton lookup against :func:`plane_features_torch` on one random case.

    Returns:
        ``{name: max |triton - torch| / max(1, max |torch|)}`` for ``out``, ``coords`` (gradient) and
        ``planes`` (gradients, all levels), plus ``border_coords``: the largest Triton coordinate
        gradient along an axis where the point lies exactly on the border (torch's is 0 there).
    """
    from nerf.encoders import plane_features_torch
    from nerf.kernels import plane_features_triton

    planes, coords, grad_out = make_case(n_planes, device)
    ref = _lookup_with_grads(plane_features_torch, planes, coords, grad_out)
    got = _lookup_with_grads(plane_features_triton, planes, coords, grad_out)

    def err(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp(min=1.0))

    on_border = coords.abs() == 1.0
    return {
        "out": err(got[0], ref[0]),
        "coords": err(got[1], ref[1]),
        "planes": max(err(g, r) for g, r in zip(got[2:], ref[2:], strict=True)),
        "border_coords": float(got[1][on_border].abs().max()),
        "border_coords_torch": float(ref[1][on_border].abs().max()),
    }


def main() -> None:
    """Print one JSON line: the errors for P=1 and P=3 on CPU, and whether the interpreter ran."""
    from nerf.kernels.triton_planes import interpreting

    results: dict[str, object] = {f"P={p}": compare(p, "cpu") for p in (1, 3)}
    results["interpreting"] = interpreting()
    results["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
