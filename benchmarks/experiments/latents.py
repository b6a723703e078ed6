"""Which latents a held-out frame should borrow: a checkpoint's held-out PSNR when each held-out frame takes the
mean head and torso latents of its k nearest training frames (``nerf.data.NEAREST_LATENTS`` is the default k).

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/latents.py --checkpoint CKPT --dataset DS
        [--k 5,2,1] [--poses near1,mean,none]

Prints, per k, the mean held-out head-only and full-image PSNR and each frame's full-image PSNR. With ``--poses``
(a checkpoint trained with ``model.pose_refine``), also the held-out head-only PSNR when every held-out frame takes
the head pose correction of: ``near<k>``, the mean over its k nearest training frames; ``mean``, the mean over all
training frames; ``none``, no correction (what :attr:`nerf.radnerf.config.RadNerfConfig.pose_borrow` chooses between;
the latents stay the default borrowed ones). Last line: ``psnr_k<k>=<dB> ...`` (full image, every held-out frame),
then ``head_pose_<choice>=<dB> ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK  # noqa: E402
from jobs.train import load_identity, lpips_module  # noqa: E402
from nerf.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from nerf.config import config_from_json  # noqa: E402
from nerf.metrics import psnr  # noqa: E402
from nerf.trainer import Trainer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_WORK / CHECKPOINT)
    ap.add_argument("--dataset", default=str(DEFAULT_WORK / f"dataset_{DEFAULT_CLIP.stem}"))
    ap.add_argument("--k", default="5,2,1", help="comma-separated neighbour counts (default: %(default)s)")
    ap.add_argument("--poses", default="", help="comma-separated pose corrections to compare: near<k>, mean, none "
                    "(default: none compared)")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 for k in ks):
        ap.error(f"--k {args.k}: every k must be >= 1")
    poses = [p.strip() for p in args.poses.split(",") if p.strip()]
    bad = [p for p in poses if p not in ("mean", "none") and not (p.startswith("near") and p[4:].isdigit()
                                                                  and int(p[4:]) >= 1)]
    if bad:
        ap.error(f"--poses {args.poses}: unknown choice(s) {bad} (near<k> with k >= 1, mean, none)")
    try:
        ck = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        print(f"latents: {e}", file=sys.stderr)
        return 2
    cfg = config_from_json(ck["config"])
    if poses and not cfg.model.pose_refine:
        print(f"latents: --poses: {args.checkpoint} was trained without model.pose_refine", file=sys.stderr)
        return 2
    data = load_identity(args.dataset, str(ck["identity"]), cfg.trainer.size, max_frames=cfg.trainer.max_frames)
    tr = Trainer(cfg, data, lpips=lpips_module() if cfg.trainer.lips.steps else None)
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
    last = " ".join(f"psnr_k{k}={v:.3f}" for k, v in result.items())
    if poses:
        assert tr.model.pose_deltas is not None
        with tr.ema.applied(tr.model):  # the averaged corrections, as evaluation renders
            deltas = tr.model.pose_deltas.detach().clone()
        n = data.n_train
        for choice in poses:
            heads = []
            for f, gt in gts.items():
                if choice == "none":
                    delta = torch.zeros(6)
                elif choice == "mean":
                    delta = deltas[:n].mean(0)
                else:
                    delta = deltas[torch.from_numpy(data.nearest_train(f, int(choice[4:])))].mean(0)
                with torch.no_grad():
                    heads.append(psnr(tr.render_frame(f, head_only=True, pose_delta=delta), gt))
            print(f"pose correction {choice}: held-out head {np.mean(heads):.3f} dB (first 8 frames "
                  f"{np.mean(heads[:8]):.3f}, the rest {np.mean(heads[8:]):.3f})", flush=True)
            last += f" head_pose_{choice}={np.mean(heads):.3f}"
    print(last.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
