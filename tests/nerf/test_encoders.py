"""Plane encoders: the torch reference on its own, and the Triton kernels against it (CPU interpreter, CUDA)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nerf.encoders import GridEncoderConfig, PlaneEncoder, plane_features, plane_features_torch, spherical_harmonics
from tests.nerf.planes_reference import compare

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = 1e-5
"""Largest error allowed, relative to max(1, largest reference magnitude)."""
SMALL = GridEncoderConfig(n_levels=3, features_per_level=2, base_resolution=4, max_resolution=16, backend="torch")


def _corner_plane() -> torch.Tensor:
    """A ``[1, 1, 2, 2]`` plane: 1 top-left, 2 top-right, 4 bottom-left, 8 bottom-right (rows are y)."""
    return torch.tensor([[1.0, 2.0], [4.0, 8.0]]).reshape(1, 1, 2, 2)


def _lookup(plane: torch.Tensor, points: list[tuple[float, float]]) -> list[float]:
    """Features of one single-feature plane at ``(x, y)`` points."""
    coords = torch.tensor(points).unsqueeze(0)  # [1, N, 2]
    return plane_features_torch([plane], coords)[:, 0].tolist()


class TestTorchPath:
    """``plane_features_torch`` and ``PlaneEncoder`` on the torch backend."""

    @pytest.mark.parametrize(("in_dim", "n_planes"), [(2, 1), (3, 3)])
    def test_output_shape_is_out_dim(self, in_dim: int, n_planes: int) -> None:
        """2D and 3D encoders give ``[N, levels * planes * features]`` = ``out_dim`` columns."""
        enc = PlaneEncoder(in_dim, SMALL)
        out = enc(torch.rand(10, in_dim) * 2 - 1)
        assert enc.out_dim == 3 * n_planes * 2
        assert out.shape == (10, enc.out_dim)

    def test_bilinear_at_centre_and_corners(self) -> None:
        """The centre averages the four texels; corners (align_corners) hit one texel; x indexes the width."""
        values = _lookup(_corner_plane(), [(0.0, 0.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0), (0.5, -1.0)])
        assert values == [3.75, 1.0, 2.0, 4.0, 8.0, 1.75]

    def test_outside_is_clamped_to_the_border(self) -> None:
        """Points outside [-1, 1] read the border value of the nearest edge or corner."""
        values = _lookup(_corner_plane(), [(-3.0, -2.0), (5.0, 0.0), (0.0, 7.0), (-1.5, 0.0), (9.0, 9.0)])
        assert values == [1.0, 5.0, 6.0, 2.5, 8.0]

    def test_gradcheck_float64(self) -> None:
        """Analytic gradients w.r.t. planes and coordinates match finite differences (float64)."""
        gen = torch.Generator().manual_seed(0)
        planes = [torch.randn(2, 2, r, r, generator=gen, dtype=torch.float64, requires_grad=True) for r in (3, 5)]
        coords = (torch.rand(2, 6, 2, generator=gen, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda c, *p: plane_features_torch(list(p), c), (coords, *planes))

    @pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
    @pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs Triton on CPU")
    def test_triton_backend_on_cpu_raises(self) -> None:
        """``backend="triton"`` on CPU tensors without the interpreter raises a clear RuntimeError."""
        planes, coords = [torch.zeros(1, 2, 4, 4)], torch.zeros(1, 5, 2)
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            plane_features(planes, coords, backend="triton")


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    """The comparison script's JSON, run once under ``TRITON_INTERPRET=1`` on CPU in a subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "tests.nerf.planes_reference"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
class TestTritonInterpreter:
    """The Triton kernels on CPU tensors through Triton's interpreter, against the torch reference."""

    def test_interpreter_ran(self, interpreter_results: dict) -> None:
        """The subprocess really decorated the kernels under the interpreter."""
        assert interpreter_results["interpreting"] is True

    @pytest.mark.parametrize("n_planes", [1, 3])
    def test_forward_and_gradients_match_torch(self, interpreter_results: dict, n_planes: int) -> None:
        """Values and gradients w.r.t. planes and coordinates match ``plane_features_torch`` within 1e-5."""
        errors = interpreter_results[f"P={n_planes}"]
        assert errors["out"] < TOL and errors["planes"] < TOL and errors["coords"] < TOL, errors

    @pytest.mark.parametrize("n_planes", [1, 3])
    def test_border_coordinate_gradient_is_zero(self, interpreter_results: dict, n_planes: int) -> None:
        """Exactly at -1 or 1 the coordinate gradient along that axis is 0, as in ``grid_sample``."""
        errors = interpreter_results[f"P={n_planes}"]
        assert errors["border_coords"] == 0.0 and errors["border_coords_torch"] == 0.0, errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
class TestTritonCuda:
    """The compiled Triton kernels on CUDA against the torch reference."""

    @pytest.mark.parametrize("n_planes", [1, 3])
    def test_forward_and_gradients_match_torch(self, n_planes: int) -> None:
        """Values and gradients w.r.t. planes and coordinates match ``plane_features_torch`` within 1e-5."""
        errors = compare(n_planes, "cuda")
        assert errors["out"] < TOL and errors["planes"] < TOL and errors["coords"] < TOL, errors
        assert errors["border_coords"] == 0.0, errors

    def test_triplane_encoder_backends_agree(self) -> None:
        """A tri-plane ``PlaneEncoder`` gives the same output and gradients on the triton and torch backends."""
        torch.manual_seed(0)
        config = GridEncoderConfig(n_levels=4, base_resolution=8, max_resolution=64, init_scale=1.0)
        ref = PlaneEncoder(3, dataclasses.replace(config, backend="torch")).cuda()
        fused = PlaneEncoder(3, dataclasses.replace(config, backend="triton")).cuda()
        fused.load_state_dict(ref.state_dict())
        x = (torch.rand(4096, 3, device="cuda") * 2.2 - 1.1).requires_grad_(True)
        results = []
        for enc in (ref, fused):
            out = enc(x)
            grads = torch.autograd.grad(out.square().sum(), [x, *enc.parameters()])
            results.append([out.detach(), *grads])
        for got, want in zip(results[1], results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_spherical_harmonics_are_orthonormal_on_the_sphere(degree: int) -> None:
    """The degree**2 functions integrate to the identity Gram matrix over the sphere (4 pi times the mean over
    uniform directions), so no constant or product is wrong; a degree outside 1-4 is refused."""
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    y = spherical_harmonics(d, degree)
    assert y.shape == (d.shape[0], degree**2)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(degree**2, dtype=torch.float64), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="degree 5"):
        spherical_harmonics(d[:4], 5)
