"""Accelerated kernels for :mod:`nerf`; every kernel module is imported lazily, on first call.

Importing this package imports neither Triton nor compiles anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def plane_features_triton(planes: Sequence[Tensor], coords: Tensor) -> Tensor:
    """:func:`nerf.encoders.plane_features_torch` (same arguments and result) as one fused Triton kernel, forward
    and backward.

    Raises:
        RuntimeError: Triton is not installed, or ``coords`` are on the CPU and Triton's
            interpreter (``TRITON_INTERPRET=1``) is off.
    """
    try:
        from nerf.kernels.triton_planes import plane_features_triton as impl
    except ImportError as exc:
        raise RuntimeError(f"the triton encoder backend needs the `triton` package: {exc}") from exc
    return impl(planes, coords)


__all__ = ["plane_features_triton"]
