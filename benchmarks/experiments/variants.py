"""Model variants compared on the head stage alone, over seeds: which change moves held-out quality.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/variants.py [--steps 1500] [--seeds 0,1,2]
        [--clip ../shared/data/clips/RD_Radio2_000.mp4] [--preset cpu]
        --variant base= --variant latent=model.head.latent_in_density=true [--variant NAME=KEY=VALUE,KEY=VALUE ...]

Each variant is a name and config overrides (dotted keys as in ``parley sweep``, values YAML scalars; the syntax
of ``benchmarks/experiments/torso.py``) applied to the preset; ``base=`` is the preset itself. Every variant trains
the head stage only (``--steps`` steps, lips and torso off) once per seed on the dataset of ``benchmarks/train.py``
(built and cached in ``--work`` the first time), then is measured on the head rendered over the ground truth's
torso and background (the head stage's own target):

* ``heldout``: PSNR on every held-out frame (the last ~10% of the clip, never trained on);
* ``train``: PSNR on 6 training frames spread over the clip;
* ``audio_swap``: held-out PSNR when each held-out frame takes the audio of the training frame nearest it in time
  instead of its own. Above ``heldout`` means the audio path learnt more than the mouth: on unseen audio the head
  changes where it should not (the audio works as a time code of the training frames).

One line per run, then per variant the medians over seeds. Writes ``variants.json`` in ``--work`` (and, with
``--checkpoints``, each run's checkpoint as ``variants/<variant>_seed<k>.pt`` there, to look into). Last line:
``<variant>_heldout=<dB> <variant>_train=<dB> <variant>_audio_swap=<dB> ...`` (medians over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PARLEY_ASSETS", str(ROOT.parent / "shared" / "assets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import DEFAULT_CLIP, DEFAULT_WORK, build_dataset, parse_variant, with_steps  # noqa: E402
from jobs.fanout_config import FanoutError, apply_overrides  # noqa: E402
from jobs.train import load_identity  # noqa: E402
from nerf.data import IdentityFrames  # noqa: E402
from nerf.methods import preset  # noqa: E402
from nerf.metrics import psnr  # noqa: E402
from nerf.trainer import Trainer  # noqa: E402

TRAIN_FRAMES = 6


def head_psnr(trainer: Trainer, frame: int, audio_from: int | None = None) -> float:
    """PSNR of the head over the ground truth's body on one frame; ``audio_from``: another frame's audio."""
    img = trainer.render_frame(frame, head_only=True, audio_from=audio_from)
    return psnr(img, torch.from_numpy(trainer.data.images[frame]).float() / 255)


def measure(trainer: Trainer, data: IdentityFrames) -> dict[str, float]:
    """The run's figures (see the module docstring)."""
    val = data.val_ids.tolist()
    train = np.linspace(0, data.n_train - 1, TRAIN_FRAMES).round().astype(int).tolist()
    with torch.no_grad():
        out = {"heldout": float(np.mean([head_psnr(trainer, f) for f in val])),
               "train": float(np.mean([head_psnr(trainer, f) for f in train])),
               "audio_swap": float(np.mean([head_psnr(trainer, f, int(data.nearest_train(f, 1)[0]))
                                            for f in val]))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,... (repeatable)")
    ap.add_argument("--steps", type=int, default=1500, help="head steps per run (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--checkpoints", action="store_true", help="keep each run's checkpoint in WORK/variants/")
    args = ap.parse_args()
    try:
        variants = dict(parse_variant(v) for v in (args.variant or ["base="]))
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        base = with_steps(preset(args.preset), args.steps, 0, 0)
        configs = {name: apply_overrides(base, ov) for name, ov in variants.items()}
    except (ValueError, KeyError, FanoutError) as e:
        print(f"variants: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    root = build_dataset(args.clip, args.work)
    data = load_identity(str(root), args.clip.stem, base.trainer.size)
    print(f"{data.identity}: {data.n_train} training frames, {len(data.val_ids)} held out; head stage of "
          f"{args.steps} steps per run; variants {', '.join(variants)}; seeds {seeds}", flush=True)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for name, cfg in configs.items():
            cfg = apply_overrides(cfg, {"trainer.seed": seed})
            torch.manual_seed(seed)
            trainer = Trainer(cfg, data, lpips=None)
            t = time.perf_counter()
            while trainer.step() is not None:
                pass
            seconds = time.perf_counter() - t
            if args.checkpoints:
                trainer.save_checkpoint(args.work / "variants" / f"{name}_seed{seed}.pt")
            figures = measure(trainer, data)
            runs.append({"variant": name, "seed": seed, "seconds": seconds, **figures})
            print(f"{name:<16} seed {seed}: heldout {figures['heldout']:.2f} train {figures['train']:.2f} "
                  f"audio_swap {figures['audio_swap']:.2f} dB ({seconds:.0f} s)", flush=True)
    summary: dict[str, float] = {}
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        for k in ("heldout", "train", "audio_swap"):
            summary[f"{name}_{k}"] = statistics.median(r[k] for r in mine)
        print(f"{name:<16} median over {len(mine)} seeds: heldout {summary[f'{name}_heldout']:.2f} "
              f"train {summary[f'{name}_train']:.2f} audio_swap {summary[f'{name}_audio_swap']:.2f}", flush=True)
    (args.work / "variants.json").write_text(json.dumps(
        {"steps": args.steps, "preset": args.preset, "clip": str(args.clip), "variants": variants, "runs": runs,
         "summary": summary}, indent=2, default=str))
    print(" ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
