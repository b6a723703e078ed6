"""Seconds per training step of the ``cpu`` preset's head stage, to compare the trainer's own overhead between two
versions of the code on the same machine (alternate the runs: the machine's noise is larger than the effect).

    .venv/bin/python benchmarks/experiments/step_time.py [--code DIR] [--dataset DS] [--identity ID] [--steps 150]

``--code`` is the repository whose packages are imported (default: this one; e.g. a ``git worktree`` of an older
commit). The dataset defaults to the one ``benchmarks/train.py`` builds. After 20 warm-up steps, times ``--steps``
head steps at 256 px with 2 torch threads. The last line is ``code=<dir> s_per_step=<s>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=ROOT)
    ap.add_argument("--dataset", default="/tmp/parley_bench_train/dataset_WDA_BobMenendez_000")
    ap.add_argument("--identity", default="WDA_BobMenendez_000")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import torch

    from jobs.train import load_identity
    from nerf.trainer import Trainer

    if (args.code / "nerf" / "methods.py").exists():
        from nerf.methods import preset
    else:  # before the method registry (72fcf6e and older)
        from nerf.presets import preset  # type: ignore[import-not-found,no-redef]
    torch.set_num_threads(2)
    cfg = preset("cpu")
    tc = cfg.trainer
    cfg = replace(cfg, trainer=replace(tc, head=replace(tc.head, steps=10_000), lips=replace(tc.lips, steps=0)))
    trainer = Trainer(cfg, load_identity(args.dataset, args.identity, 256))
    for _ in range(20):
        trainer.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    print(f"code={args.code} s_per_step={(time.perf_counter() - t0) / args.steps:.4f}")


if __name__ == "__main__":
    main()
