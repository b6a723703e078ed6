"""Whether two checkpoints hold the same weights, tensor by tensor (``torch.equal``): a refactor that must not change
training is checked by training the same recipe and seed before and after it and comparing the two.

    .venv/bin/python benchmarks/experiments/same_weights.py BEFORE/checkpoint.pt AFTER/checkpoint.pt

Prints each checkpoint's format and steps; the last line is ``identical=<0|1> model=<equal>/<n> ema=<equal>/<n>``.
Reads the files as tensors only (``weights_only=True``), of any format version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(tensors with the same name, shape, dtype and values, tensors in either)."""
    names = set(a) | set(b)
    return sum(1 for k in names if k in a and k in b and torch.equal(a[k], b[k])), len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    ckpts = [torch.load(p, map_location="cpu", weights_only=True) for p in (args.before, args.after)]
    for p, c in zip((args.before, args.after), ckpts, strict=True):
        print(f"{p}: format {c.get('format')}, stage {c.get('stage')}, {c.get('global_step')} steps")
    model = equal(ckpts[0]["model"], ckpts[1]["model"])
    ema = equal(ckpts[0]["ema"], ckpts[1]["ema"])
    same = model[0] == model[1] and ema[0] == ema[1] and ckpts[0]["global_step"] == ckpts[1]["global_step"]
    print(f"identical={int(same)} model={model[0]}/{model[1]} ema={ema[0]}/{ema[1]}")


if __name__ == "__main__":
    main()
