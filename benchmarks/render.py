"""Rendering speed of a trained avatar from new audio: frames per second at 256 and 512 px, CPU (and CUDA).

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/render.py [--checkpoint PATH] [--frames 25] [--runs 3]

What is measured: ``--frames`` frames are rendered with :meth:`nerf.avatar.Avatar.render` from the audio
features of a shared wav (computed as ``parley render`` does: :func:`workers.audio_decode.read_audio` and
:func:`workers.audio.frame_features`), at 256 and 512 px, on the CPU and, when ``torch.cuda.is_available()``,
on CUDA. Frames per second = (frames - 1) / seconds after the first frame (the first is warm-up), including
the copy of each frame back to host memory as uint8; the median over ``--runs`` runs is reported.

The checkpoint: ``--checkpoint``, else ``benchmarks/train.py``'s ``<work>/checkpoint.pt``, else a model trained
here briefly (the ``cpu`` preset, ``--head-steps`` head and ``--torso-steps`` torso steps, no lips stage) on
the same cached one-clip dataset, saved as ``<work>/checkpoint_render.pt`` and reused next time, so the
occupancy grid (which decides how many samples a frame costs) is a trained one. The last line is:

    fps_256=... fps_512=... [cuda_fps_256=... cuda_fps_512=...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK, build_dataset, with_steps  # noqa: E402
from nerf.avatar import Avatar  # noqa: E402

DEFAULT_AUDIO = SHARED / "data" / "audio" / "RD_Radio31_000.wav"
RENDER_CHECKPOINT = "checkpoint_render.pt"
SIZES = (256, 512)


def train_briefly(work: Path, clip: Path, head_steps: int, torso_steps: int) -> Path:
    """Train the ``cpu`` preset for a few head and torso steps (no lips stage) and save its checkpoint."""
    from jobs.train import load_identity
    from nerf.methods import preset
    from nerf.trainer import Trainer

    cfg = with_steps(preset("cpu"), head_steps, 0, torso_steps)
    data = load_identity(str(build_dataset(clip, work)), clip.stem, cfg.trainer.size)
    trainer = Trainer(cfg, data)
    t = time.perf_counter()
    while (r := trainer.step()) is not None:
        if r.step % 50 == 0 or r.step == trainer.stage_config(r.stage).steps:
            print(f"  {r.stage} step {r.step} loss {r.loss:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    path = trainer.save_checkpoint(work / RENDER_CHECKPOINT)
    print(f"trained {head_steps} head + {torso_steps} torso steps in {time.perf_counter() - t:.0f} s -> {path}",
          flush=True)
    return path


def features(audio: Path, n: int, fps: float = 25.0) -> np.ndarray:
    """Audio features [n, window, n_mels] of the first ``n`` video frames of an audio file."""
    from workers.audio import frame_features
    from workers.audio_decode import read_audio
    from workers.config import AudioFeatureConfig

    acfg = AudioFeatureConfig()
    samples = read_audio(audio, acfg.sample_rate)
    return frame_features(samples, n, fps, acfg).mel


def frames_per_s(avatar: Avatar, feats: np.ndarray, size: int, chunk: int | None = None) -> float:
    """Frames per second of one render of ``feats`` at ``size`` (``chunk`` rays per forward pass, default: the
    device's, :func:`nerf.rendering.default_chunk`), after the first (warm-up) frame."""
    cuda = avatar.device.type == "cuda"
    start = None
    k = 0
    for k, _ in enumerate(avatar.render(feats, size=size, chunk=chunk), 1):
        if k == 1:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    assert start is not None and k == feats.shape[0]
    return (k - 1) / (time.perf_counter() - start)


def median_frames_per_s(avatar: Avatar, feats: np.ndarray, size: int, runs: int,
                        chunk: int | None = None) -> tuple[float, list[float]]:
    """The median of :func:`frames_per_s` over ``runs`` renders, and each run's figure."""
    r = [frames_per_s(avatar, feats, size, chunk) for _ in range(runs)]
    return statistics.median(r), r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="checkpoint to render (default: <work>/checkpoint.pt, else a briefly trained one)")
    ap.add_argument("--frames", type=int, default=25,
                    help="frames per run, the first is warm-up (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="runs per size and device; the median is reported "
                                                        "(default: %(default)s)")
    ap.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="driving audio (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help="benchmarks/train.py's work directory: its checkpoint, the cached dataset "
                         "(default: %(default)s)")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP,
                    help="clip of the dataset for the brief training without a checkpoint (default: %(default)s)")
    ap.add_argument("--head-steps", type=int, default=300,
                    help="head steps of the brief training (default: %(default)s)")
    ap.add_argument("--torso-steps", type=int, default=100,
                    help="torso steps of the brief training (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.frames < 2:
        ap.error("--frames must be at least 2 (the first frame is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)

    ckpt = args.checkpoint
    if ckpt is None:
        for name in (CHECKPOINT, RENDER_CHECKPOINT):
            if (args.work / name).is_file():
                ckpt = args.work / name
                break
    if ckpt is None:
        print(f"no checkpoint in {args.work}: training the cpu preset briefly ({args.head_steps} head steps, "
              f"{args.torso_steps} torso steps) on {args.clip.name}", flush=True)
        args.work.mkdir(parents=True, exist_ok=True)
        ckpt = train_briefly(args.work, args.clip, args.head_steps, args.torso_steps)
    feats = features(args.audio, args.frames)
    print(f"checkpoint {ckpt}; {args.frames} frames of {args.audio.name}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs", flush=True)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    figures: dict[str, float] = {}
    for device in devices:
        avatar = Avatar.from_checkpoint(ckpt, device)
        occ = float(avatar.model.grid.occupancy())
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        for size in SIZES:
            fps, runs = median_frames_per_s(avatar, feats, size, args.runs)
            key = f"fps_{size}" if device == "cpu" else f"cuda_fps_{size}"
            figures[key] = fps
            torso = "yes" if getattr(avatar.model, "with_torso", False) else "no"
            print(f"{name} {size} px: {fps:.3f} frames/s ({1 / fps:.3f} s/frame; runs "
                  f"{', '.join(f'{r:.3f}' for r in runs)}; trained for {avatar.kit['size']} px, "
                  f"occupied cells {100 * occ:.1f}%, torso {torso})", flush=True)
    print(" ".join(f"{k}={v:.3g}" if v < 100 else f"{k}={v:.1f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
