"""Throughput of the tri-plane encoder, forward + backward (not a test).

A ``PlaneEncoder(3, ...)`` with 8 levels from 16 to 512 texels and 2 features, on 65536 random
points: the torch backend on CPU, and when CUDA is available both backends on the GPU. Each figure
is the median of 5 timed runs after 2 warm-ups. Last line: ``name=value`` pairs in millions of
samples per second.

    python benchmarks/encoders.py [--points 65536]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from nerf.encoders import GridEncoderConfig, PlaneEncoder, triton_available

CONFIG = GridEncoderConfig(n_levels=8, features_per_level=2, base_resolution=16, max_resolution=512)


def time_encoder(backend: str, device: str, n_points: int, warmup: int = 2, runs: int = 5) -> float:
    """Median seconds of one forward + backward of the tri-plane encoder on ``n_points`` points."""
    torch.manual_seed(0)
    encoder = PlaneEncoder(3, dataclasses.replace(CONFIG, backend=backend)).to(device)  # type: ignore[arg-type]
    x = torch.rand(n_points, 3, device=device) * 2 - 1
    grad = torch.randn(n_points, encoder.out_dim, device=device)
    times = []
    for i in range(warmup + runs):
        encoder.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        encoder(x).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    """Print each backend's time, then the throughputs on one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536)
    args = parser.parse_args()
    cases = [("cpu", "torch")]
    if torch.cuda.is_available():
        cases.append(("cuda", "torch"))
        if triton_available():
            cases.append(("cuda", "triton"))
    figures = {}
    for device, backend in cases:
        seconds = time_encoder(backend, device, args.points)
        print(f"{device}/{backend}: {1000 * seconds:.2f} ms per forward+backward of {args.points} points")
        figures[f"{device}_{backend}_msamples_per_s"] = args.points / seconds / 1e6
    print(" ".join(f"{k}={v:.3g}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
