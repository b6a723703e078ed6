"""Where a trained avatar's error is: per-region squared error of a checkpoint on training and held-out frames.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/regions.py --checkpoint CKPT --dataset DS

Regions come from the dataset's parsing (background, head, neck, torso). For each frame: full-image PSNR,
head-only PSNR (the head over the ground truth's body and background), and per region the MSE and its share of the
image's squared error. ``bg_floor`` is the MSE between the identity's background image and the frame on background
pixels at least 3 px from the person (eroded mask): no model that composites over that background can beat it.
``ceiling`` is the full-image PSNR of a perfect person over the identity's background image (the frame's background
pixels against the background image, zero error elsewhere): the best any model that composites over it can score.
``head_band`` is the share of the image's squared error on background pixels within 5 px of the parsed head (the
head's silhouette: where the head field puts hair or haze the parsing calls background, or the reverse).
Last line: ``train_psnr=<dB> heldout_psnr=<dB> heldout_torso_mse=<x> bg_floor_mse=<x> heldout_ceiling_psnr=<dB>
heldout_head_band_share=<x>`` (means over the frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK  # noqa: E402
from jobs.train import load_identity, lpips_module  # noqa: E402
from nerf.checkpoint import load_checkpoint  # noqa: E402
from nerf.config import config_from_json  # noqa: E402
from nerf.trainer import Trainer  # noqa: E402
from pipelines.schema import HEAD  # noqa: E402

REGIONS = {0: "bg", 1: "head", 2: "neck", 3: "torso"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_WORK / CHECKPOINT)
    ap.add_argument("--dataset", default=str(DEFAULT_WORK / f"dataset_{DEFAULT_CLIP.stem}"))
    ap.add_argument("--frames", type=int, default=3, help="frames of each split (default: %(default)s)")
    args = ap.parse_args()
    ck = load_checkpoint(args.checkpoint)
    cfg = config_from_json(ck["config"])
    data = load_identity(args.dataset, str(ck["identity"]), cfg.trainer.size, max_frames=cfg.trainer.max_frames)
    tr = Trainer(cfg, data, lpips=lpips_module() if cfg.trainer.lips.steps else None)
    tr.load_checkpoint(args.checkpoint)
    bg_img = data.background.astype(np.float32) / 255
    splits = {"train": np.linspace(0, data.n_train - 1, args.frames).round().astype(int),
              "heldout": data.val_ids[np.linspace(0, len(data.val_ids) - 1, args.frames).round().astype(int)]}
    agg: dict[str, list[float]] = {"train_psnr": [], "heldout_psnr": [], "heldout_torso_mse": [], "bg_floor_mse": [],
                                   "heldout_ceiling_psnr": [], "heldout_head_band_share": []}
    for split, ids in splits.items():
        for f in ids.tolist():
            gt = data.images[f].astype(np.float32) / 255
            with torch.no_grad():
                full = tr.render_frame(f).numpy()
                head = tr.render_frame(f, head_only=True).numpy()
            err = ((full - gt) ** 2).mean(-1)
            lab = data.labels[f]
            far = cv2.erode((lab == 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            floor = float(((bg_img - gt) ** 2).mean(-1)[far].mean()) if far.any() else float("nan")
            p = -10 * np.log10(err.mean())
            to_head = cv2.distanceTransform((lab != HEAD).astype(np.uint8), cv2.DIST_L2, 3)
            band = float(err[(lab == 0) & (to_head <= 5)].sum() / err.sum())
            ceiling = -10 * np.log10(np.where(lab == 0, ((bg_img - gt) ** 2).mean(-1), 0.0).mean())
            line = (f"{split:<7} frame {f:4d}: psnr {p:.2f} head-only "
                    f"{-10 * np.log10(((head - gt) ** 2).mean()):.2f} ceiling {ceiling:.2f} bg_floor {floor:.4f} "
                    f"head_band {band:.2f} |")
            for k, name in REGIONS.items():
                m = lab == k
                if m.any():
                    line += f" {name} mse {err[m].mean():.4f} share {err[m].sum() / err.sum():.2f};"
                if split == "heldout" and name == "torso" and m.any():
                    agg["heldout_torso_mse"].append(float(err[m].mean()))
            print(line, flush=True)
            agg[f"{split}_psnr"].append(float(p))
            if split == "heldout":
                agg["heldout_ceiling_psnr"].append(float(ceiling))
                agg["heldout_head_band_share"].append(band)
            agg["bg_floor_mse"].append(floor)
    print(" ".join(f"{k}={np.nanmean(v):.4f}" for k, v in agg.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
