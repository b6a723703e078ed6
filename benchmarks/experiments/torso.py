"""Torso ablation on a fixed trained head: retrain only the torso stage under config variants and seeds.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/torso.py [--checkpoint CKPT] [--dataset DS] \
        [--steps 3000] [--eval-every 1000] [--seeds 0,1,2] \
        --variant base= --variant mask=model.losses.torso_mask=0.01,model.torso.pose_in_color=false

The head (weights and their EMA) comes from a checkpoint (default: the one ``benchmarks/train.py`` leaves);
each variant is ``name=key=value,key=value`` with dotted config keys as in ``parley sweep`` (empty: the
checkpoint's own config). For every variant and seed a new torso is initialised from that seed and trained for
``--steps`` steps (lips stage skipped); held-out full-image PSNR over all held-out frames and the mean PSNR of 3
training frames are printed every ``--eval-every`` steps. The torso starts from a random initialisation, so a
difference between variants means something only beyond the spread between seeds.

Last line: ``<variant>_psnr=<mean over seeds> <variant>_spread=<max - min> ...`` (held-out, at the last step).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK, parse_variant  # noqa: E402
from jobs.fanout_config import FanoutError, apply_overrides  # noqa: E402
from jobs.train import load_identity  # noqa: E402
from nerf.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from nerf.config import config_from_json  # noqa: E402
from nerf.metrics import psnr  # noqa: E402
from nerf.trainer import Trainer  # noqa: E402


def mean_psnr(trainer: Trainer, frames: list[int]) -> float:
    """Mean PSNR of the full renders of ``frames`` against their images."""
    imgs = trainer.store.images
    return float(np.mean([psnr(trainer.render_frame(f), imgs[f].float() / 255) for f in frames]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_WORK / CHECKPOINT)
    ap.add_argument("--dataset", default=str(DEFAULT_WORK / f"dataset_{DEFAULT_CLIP.stem}"))
    ap.add_argument("--steps", type=int, default=3000, help="torso steps per run (default: %(default)s)")
    ap.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated torso seeds (default: %(default)s)")
    ap.add_argument("--variant", action="append", default=None, help="name=key=value,... (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in (args.variant or ["base="])]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    try:  # bad checkpoints and variant keys fail here, before the dataset is read
        ck = load_checkpoint(args.checkpoint)
        base = config_from_json(ck["config"])
        configs = {name: apply_overrides(base, overrides) for name, overrides in variants}
    except (CheckpointError, ValueError, FanoutError) as e:
        raise SystemExit(f"error: {e}") from None
    data = load_identity(args.dataset, str(ck["identity"]), base.trainer.size, max_frames=base.trainer.max_frames)
    held = [int(f) for f in data.val_ids]
    train = [int(f) for f in np.linspace(0, data.n_train - 1, 3).round()]
    head = {k: v for k, v in ck["model"].items() if not k.startswith("torso")}
    head_ema = {k: v for k, v in ck["ema"].items() if not k.startswith("torso")}
    print(f"head from {args.checkpoint} (identity {ck['identity']}); {len(held)} held-out frames; "
          f"{args.steps} torso steps x {len(seeds)} seeds x {len(variants)} variants", flush=True)

    final: dict[str, list[float]] = {}
    for name, cfg in configs.items():
        tc = cfg.trainer
        tc = replace(tc, lips=replace(tc.lips, steps=0), torso=replace(tc.torso, steps=args.steps))
        cfg = replace(cfg, trainer=tc)
        for seed in seeds:
            torch.manual_seed(seed)  # the torso's initialisation
            tr = Trainer(cfg, data)
            tr.model.load_state_dict(head, strict=False)
            for k, v in head_ema.items():
                tr.ema.shadow[k].copy_(v)
            tr.generator.manual_seed(seed)
            tr.stage, tr.stage_step = "torso", 0
            tr._make_optimizer()
            t0 = time.perf_counter()
            while (r := tr.step()) is not None:
                if r.step % args.eval_every == 0 or r.step == args.steps:
                    h, t = mean_psnr(tr, held), mean_psnr(tr, train)
                    print(f"{name} seed {seed} step {r.step}: held-out psnr {h:.3f} train psnr {t:.3f} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
            final.setdefault(name, []).append(h)
    print(" ".join(f"{n}_psnr={np.mean(v):.3f} {n}_spread={np.max(v) - np.min(v):.3f}" for n, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
