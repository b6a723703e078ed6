"""The head stage's held-out curve at a fine step resolution, and whether a validation block carved from the
training frames shows the same curve.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/headcurve.py [--clip CLIP] [--steps 6000]
        [--every 400] [--val-frames 10] [--seed 0] [--set KEY=VALUE ...]

Trains the head stage alone (the ``cpu`` preset's, lips and torso off; ``--set`` overrides keys as in
``benchmarks/train.py``) on the clip's dataset of ``benchmarks/train.py`` (built and cached in ``--work``). With
``--val-frames N`` the last N training frames are not trained on: a validation block, the held-out frames' mirror
image one block earlier (the same extrapolation in time past the frames trained on; the held-out frames then
borrow the latents of the frame before the block). Every ``--every`` steps, with the averaged (EMA) weights: the
head PSNR (the head over the ground truth's torso and background, the head stage's own target) on every frame of
the validation block and on every 2nd held-out frame.

The question it answers: does the held-out curve's shape (where it peaks) show on frames carved from the training
set, so that a validation block could choose when the head stage stops without looking at held-out frames?
Writes ``headcurve.json`` in ``--work``. Last line: ``heldout_peak=<dB> heldout_peak_step=<n> heldout_end=<dB>``
and, with a validation block, ``val_peak=<dB> val_peak_step=<n> val_end=<dB>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PARLEY_ASSETS", str(ROOT.parent / "shared" / "assets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import DEFAULT_CLIP, DEFAULT_WORK, apply_sets, build_dataset, with_steps  # noqa: E402
from benchmarks.experiments.variants import head_psnr  # noqa: E402
from jobs.train import load_identity  # noqa: E402
from nerf.methods import preset  # noqa: E402
from nerf.trainer import Trainer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--steps", type=int, default=6000, help="head steps (default: %(default)s, the cpu preset's)")
    ap.add_argument("--every", type=int, default=400, help="steps between curve points (default: %(default)s)")
    ap.add_argument("--val-frames", type=int, default=0,
                    help="last training frames kept out of training as a validation block (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1 or args.val_frames < 0:
        ap.error("--steps and --every must be >= 1, --val-frames >= 0")
    cfg, overrides = apply_sets(with_steps(preset("cpu"), args.steps, 0, 0), args.set, {"trainer.seed": args.seed})
    torch.set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    root = build_dataset(args.clip, args.work)
    full = load_identity(str(root), args.clip.stem, cfg.trainer.size)
    if args.val_frames >= full.n_train:
        ap.error(f"--val-frames {args.val_frames}: the identity has only {full.n_train} training frames")
    data = replace(full, n_train=full.n_train - args.val_frames)
    val = list(range(data.n_train, full.n_train))
    held = [int(f) for f in full.val_ids[::2]]
    print(f"{full.identity}: head stage of {args.steps} steps on {data.n_train} frames; validation block "
          f"{val[0] if val else '-'}..{val[-1] if val else '-'} ({len(val)} frames), held-out frames {held}",
          flush=True)
    torch.manual_seed(args.seed)
    trainer = Trainer(cfg, data)
    curve: list[dict[str, float]] = []
    train_s = 0.0

    def point() -> None:
        t = time.perf_counter()
        with torch.no_grad():
            row = {"step": trainer.stage_step, "t": train_s,
                   "heldout": float(np.mean([head_psnr(trainer, f) for f in held]))}
            if val:
                row["val"] = float(np.mean([head_psnr(trainer, f) for f in val]))
        curve.append(row)
        print(f"step {row['step']:5d} t={train_s:5.0f}s heldout {row['heldout']:.2f}"
              + (f" val {row['val']:.2f}" if val else "") + f" dB (eval {time.perf_counter() - t:.0f} s)", flush=True)

    point()
    while True:
        t = time.perf_counter()
        r = trainer.step()
        train_s += time.perf_counter() - t
        if r is None:
            break
        if r.step % args.every == 0 or r.step == args.steps:
            point()
    summary: dict[str, float] = {}
    for key in ("heldout", "val") if val else ("heldout",):
        best = max(curve[1:], key=lambda row: row[key])
        summary |= {f"{key}_peak": best[key], f"{key}_peak_step": best["step"], f"{key}_end": curve[-1][key]}
    (args.work / "headcurve.json").write_text(json.dumps(
        {"clip": str(args.clip), "steps": args.steps, "val_frames": args.val_frames, "seed": args.seed,
         "overrides": overrides, "curve": curve, "summary": summary}, indent=2))
    print(" ".join(f"{k}={v:.0f}" if k.endswith("_step") else f"{k}={v:.2f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
