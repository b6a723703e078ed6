"""Which latents a held-out frame should borrow: a checkpoint's held-out PSNR when each held-out frame takes the
mean head and torso latents of its k nearest training frames (``nerf.data.NEAREST_LATENTS`` is the default k).

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/latents.py --checkpoint CKPT --dataset DS [--k 5,2,1]

Prints, per k, the mean held-out head-only and full-image PSNR and each frame's full-image PSNR. Last line:
``psnr_k<k>=<dB> ...`` (full image, every held-out frame).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PARLEY_ASSETS", str(ROOT.parent / "shared" / "assets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jobs.train import load_identity, lpips_module  # noqa: E402
from nerf.metrics import psnr  # noqa: E402
from nerf.trainer import Trainer, config_from_json, load_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/parley_bench_train/checkpoint.pt"))
    ap.add_argument("--dataset", default="/tmp/parley_bench_train/dataset_RD_Radio2_000")
    ap.add_argument("--k", default="5,2,1", help="comma-separated neighbour counts (default: %(default)s)")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 for k in ks):
        ap.error(f"--k {args.k}: every k must be >= 1")
    ck = load_checkpoint(args.checkpoint)
    cfg = config_from_json(ck["config"])
    data = load_identity(args.dataset, str(ck["identity"]), cfg.trainer.size, max_frames=cfg.trainer.max_frames)
    tr = Trainer(cfg, data, lips_loss=lpips_module() if cfg.trainer.lips.steps else None)
    tr.load_checkpoint(args.checkpoint)
    gts = {f: torch.from_numpy(data.images[f]).float() / 255 for f in data.val_ids.tolist()}
    result = {}
    for k in ks:
        with torch.no_grad():
            heads = [psnr(tr.render_frame(f, head_only=True, nearest=k), gt) for f, gt in gts.items()]
            fulls = [psnr(tr.render_frame(f, nearest=k), gt) for f, gt in gts.items()]
        result[k] = float(np.mean(fulls))
        print(f"k={k:2d}: held-out head {np.mean(heads):.3f} full {result[k]:.3f} dB | per frame full "
              + " ".join(f"{v:.1f}" for v in fulls), flush=True)
    print(" ".join(f"psnr_k{k}={v:.3f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
