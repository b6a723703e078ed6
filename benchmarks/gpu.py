"""The GPU paths measured in one prepared call of a device machine (not a test): the Triton kernels against torch,
render frames/s at 256 and 512 px, training throughput, and a short training run's held-out PSNR.

Two steps, because the device machine has torch, numpy, pyarrow and Triton but neither the audio and landmark
packages, nor ffmpeg, nor ``../shared``; and its time is short (one call should do it all):

    # 1. here: bundle what the device needs (checkpoint, audio features, dataset; ~30 MB) into .devcarry/
    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/gpu.py pack [--checkpoint PATH] [--clip PATH]
    # 2. there (the device tool's run with carry [".devcarry"] and timeout_s ~540; it prints this line too):
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py run --bundle .devcarry --out $OUT

What ``run`` measures, part by part (``--parts``); a part that fails is recorded with its error and the others
still run, and ``<out>/gpu.json`` is rewritten after each part:

* ``kernels``: ``tests/nerf/test_encoders.py``'s CUDA tests (the Triton kernels against the torch reference) and
  :mod:`benchmarks.encoders`' throughput of both backends.
* ``render``: frames/s of :meth:`nerf.avatar.Avatar.render` at each ``--sizes`` from the bundled checkpoint and
  audio features, as :mod:`benchmarks.render` counts them (median of ``--runs`` runs of ``--frames`` frames, the
  first frame warm-up, each frame copied back to host memory as uint8), first with the checkpoint's sampler
  settings and the device's rays per chunk (:func:`nerf.rendering.default_chunk`: the whole frame on CUDA), then
  for every ``march_group`` of ``--groups`` (early ray termination at 1e-4), evaluating every
  sample (``stop_transmittance=0``), and rays per chunk 32768 or the whole frame. Also the largest difference of
  a GPU frame from the CPU's, and a profile of the default 512 px render (``render_profile.txt``).
* ``train``: seconds per head and torso step and head samples/s of the ``cpu`` preset (256 px) and the ``paper``
  preset (512 px) on the bundled dataset (``--pace-steps`` steps each, the first 5 warm-up).
* ``quality``: the ``cpu`` preset trained on the device (head and torso stages; no lips stage, whose LPIPS
  weights are not there), its steps cut to fit ``--train-budget`` seconds from the measured pace, then held-out
  PSNR / SSIM and render seconds per frame; the checkpoint comes back as ``checkpoint_gpu.pt`` (for ``parley
  evaluate`` here: LPIPS and LMD).

The last line is ``name=value`` pairs (``cuda_`` on a GPU; without one, ``--device cpu`` runs the same parts on
the CPU, slowly, which the tests do with tiny settings):

    cuda_fps_256=... cuda_fps_512=... cuda_best_fps_512=... cuda_head_samples_per_s=...
    cuda_paper_head_samples_per_s=... cuda_psnr=... cuda_train_s=...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CHECKPOINT, DEFAULT_CLIP, DEFAULT_WORK, SHARED, with_steps  # noqa: E402

PARTS = ("kernels", "render", "train", "quality")
BUNDLE = ROOT / ".devcarry"
FEATURES = "audio_features.npy"
BUNDLE_LIMIT = 60 << 20
"""The device tool carries at most 64 MiB in all (the working tree included)."""
WARMUP_STEPS = 5


# pack (here) -----------------------------------------------------------------------------------------------------
def pack(checkpoint: Path | None, clip: Path, work: Path, audio: Path, frames: int, out: Path) -> Path:
    """Write the bundle ``run`` needs: the checkpoint, the audio features of ``frames`` frames of ``audio`` and the
    one-clip dataset the checkpoint was trained on (built and cached in ``work`` if needed)."""
    from benchmarks.common import build_dataset
    from benchmarks.render import RENDER_CHECKPOINT, features
    from nerf.checkpoint import load_checkpoint

    if checkpoint is None:
        found = [work / n for n in (CHECKPOINT, RENDER_CHECKPOINT) if (work / n).is_file()]
        if not found:
            raise SystemExit(f"gpu.py pack: no checkpoint in {work}; give --checkpoint, or make one with "
                             "benchmarks/train.py (30 min) or benchmarks/render.py (a brief training)")
        checkpoint = found[0]
    identity = str(load_checkpoint(checkpoint)["identity"])  # CheckpointError names the file
    if identity != clip.stem:
        raise SystemExit(f"gpu.py pack: {checkpoint} was trained on {identity!r}, not on {clip.name}; give the "
                         f"clip it was trained on with --clip")
    write_bundle(out, checkpoint, features(audio, frames), build_dataset(clip, work), identity,
                 {"clip": str(clip), "audio": str(audio)})
    rel = os.path.relpath(out, ROOT)
    print(f'device run: carry ["{rel}"], timeout_s 540, command:\n'
          f"  PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py run --bundle {rel} --out $OUT")
    return out


def write_bundle(out: Path, checkpoint: Path, feats: np.ndarray, dataset: Path, identity: str,
                 about: dict[str, str]) -> Path:
    """The bundle: ``checkpoint.pt``, audio features, the dataset, an empty ``assets/`` and ``manifest.json``
    (``about`` goes into it).

    Raises:
        SystemExit: the bundle is larger than the device tool carries.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(checkpoint, out / "checkpoint.pt")
    np.save(out / FEATURES, np.asarray(feats, np.float32))
    shutil.copytree(dataset, out / "dataset")
    (out / "assets").mkdir()  # tests/conftest.py wants <PARLEY_SHARED>/assets (the kernel tests need no file)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    manifest = {"identity": identity, "checkpoint": str(checkpoint), "frames": int(feats.shape[0]), **about,
                "commit": commit, "packed": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if size > BUNDLE_LIMIT:
        shutil.rmtree(out)
        raise SystemExit(f"gpu.py pack: the bundle would be {size / 2**20:.0f} MiB, over the {BUNDLE_LIMIT >> 20} "
                         "MiB the device tool carries")
    print(f"bundle of {identity}: {checkpoint.name}, {feats.shape[0]} audio frames, dataset -> {out} "
          f"({size / 2**20:.1f} MiB)", flush=True)
    return out


# run (there) -----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def kernels_part(bundle: Path, device: torch.device) -> dict[str, Any]:
    """The CUDA tests of the encoders (a subprocess: pytest) and the encoders' throughput."""
    from benchmarks.encoders import time_encoder
    from nerf.encoders import triton_available

    res: dict[str, Any] = {"triton": triton_available()}
    if device.type == "cuda":
        env = dict(os.environ, PARLEY_SHARED=str(bundle.resolve()))
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                            "tests/nerf/test_encoders.py", "-k", "Cuda"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        res["tests_rc"] = p.returncode
        res["tests_tail"] = (p.stdout + p.stderr)[-1500:]
        print(res["tests_tail"], flush=True)
    n = 1 << 16
    for backend in ("torch", "triton") if device.type == "cuda" else ("torch",):
        if backend == "triton" and not res["triton"]:
            continue
        s = time_encoder(backend, device.type, n)
        res[f"encoder_{backend}_msamples_per_s"] = n / s / 1e6
        print(f"encoder {backend} on {device.type}: {n / s / 1e6:.1f} M samples/s (forward + backward)", flush=True)
    return res


def fps(avatar: Any, feats: np.ndarray, size: int, runs: int, chunk: int | None = None) -> tuple[float, list[float]]:
    """Median frames/s over ``runs`` renders of ``feats`` (the first frame of each is warm-up; ``chunk`` rays per
    forward pass, default: the device's)."""
    from benchmarks.render import median_frames_per_s

    return median_frames_per_s(avatar, feats, size, runs, chunk)


def render_part(bundle: Path, device: torch.device, sizes: list[int], frames: int, runs: int,
                groups: list[int], out: Path) -> dict[str, Any]:
    from nerf.avatar import Avatar
    from nerf.rendering import default_chunk as nerf_default_chunk

    feats = np.load(bundle / FEATURES)[:frames]
    ckpt = bundle / "checkpoint.pt"
    avatar = Avatar.from_checkpoint(ckpt, device)
    base = avatar.model.config
    res: dict[str, Any] = {"frames": int(feats.shape[0]), "runs": runs, "trained_size": int(avatar.kit["size"]),
                           "occupancy": float(avatar.model.grid.occupancy()),
                           "torso": getattr(avatar.model, "with_torso", False),
                           "sampler": dataclasses.asdict(base.sampler), "default": {}, "sweep": []}
    if device.type != "cpu":  # the same frame from the CPU
        size = sizes[0]
        ref = next(Avatar.from_checkpoint(ckpt, "cpu").render(feats[:1], size=size)).astype(np.int16)
        got = next(avatar.render(feats[:1], size=size)).astype(np.int16)
        res["vs_cpu"] = {"size": size, "max_abs_diff": int(np.abs(ref - got).max()),
                         "mean_abs_diff": float(np.abs(ref - got).mean())}
        print(f"{size} px frame on {device.type} vs cpu: max |diff| {res['vs_cpu']['max_abs_diff']}/255, "
              f"mean {res['vs_cpu']['mean_abs_diff']:.3f}", flush=True)
    default_chunk = nerf_default_chunk(device)
    res["default_chunk"] = default_chunk
    for size in sizes:
        med, r = fps(avatar, feats, size, runs)
        res["default"][str(size)] = med
        print(f"{size} px, the checkpoint's sampler (march_group {base.sampler.march_group}, stop "
              f"{base.sampler.stop_transmittance:g}), {default_chunk} rays per chunk: {med:.1f} frames/s (runs "
              f"{', '.join(f'{x:.1f}' for x in r)})", flush=True)
    settings = [(g, base.sampler.stop_transmittance or 1e-4) for g in groups] + [(1, 0.0)]
    for size in sizes:
        for g, stop in settings:
            for chunk in sorted({1 << 15, size * size}):
                row = {"size": size, "march_group": g, "stop_transmittance": stop, "chunk": chunk}
                same = (g == base.sampler.march_group and stop == base.sampler.stop_transmittance
                        and min(chunk, size * size) == min(default_chunk, size * size))
                if same:  # the default setting, measured above
                    row.update(fps=res["default"][str(size)], default=True)
                    res["sweep"].append(row)
                    continue
                avatar.model.config = dataclasses.replace(
                    base, sampler=dataclasses.replace(base.sampler, march_group=g, stop_transmittance=stop))
                med, r = fps(avatar, feats, size, runs, chunk)
                row["fps"] = med
                res["sweep"].append(row)
                print(f"  {size} px group {g:2d} stop {stop:g} chunk {chunk:6d}: {med:.1f} frames/s", flush=True)
    avatar.model.config = base
    for size in sizes:
        rows = [r for r in res["sweep"] if r["size"] == size]
        res[f"best_{size}"] = max(rows, key=lambda r: r["fps"]) if rows else None
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in avatar.render(feats[:3], size=max(sizes)):
            pass
        sync(device)
    table = prof.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=25)
    (out / "render_profile.txt").write_text(f"{device.type}, {max(sizes)} px, 3 frames\n{table}")
    print(table[:4000], flush=True)
    return res


def pace_part(dataset: Path, identity: str, device: torch.device, steps: int, presets: list[str]) -> dict[str, Any]:
    """Seconds per head and torso step and head samples/s of each preset."""
    from jobs.train import load_identity
    from nerf.methods import preset
    from nerf.trainer import Trainer

    res: dict[str, Any] = {}
    for name in presets:
        cfg = with_steps(preset(name), steps, 0, steps)
        data = load_identity(str(dataset), identity, cfg.trainer.size)
        trainer = Trainer(cfg, data, device)
        times: dict[str, list[float]] = {"head": [], "torso": []}
        samples = 0
        while (r := trainer.step()) is not None:  # r.seconds ends with the step's copy of its losses to the host
            if r.step > WARMUP_STEPS:
                times[r.stage].append(r.seconds)
                samples += r.samples if r.stage == "head" else 0
        row = {"size": cfg.trainer.size, "rays_per_batch": cfg.trainer.rays_per_batch,
               "head_s_per_step": statistics.median(times["head"]),
               "torso_s_per_step": statistics.median(times["torso"]),
               "head_samples_per_s": samples / sum(times["head"])}
        res[name] = row
        print(f"{name} preset ({row['size']} px, {row['rays_per_batch']} rays/step) on {device.type}: head "
              f"{row['head_s_per_step'] * 1e3:.1f} ms/step ({row['head_samples_per_s'] / 1e6:.2f} M samples/s), "
              f"torso {row['torso_s_per_step'] * 1e3:.1f} ms/step", flush=True)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def quality_part(dataset: Path, identity: str, device: torch.device, name: str, budget_s: float,
                 pace: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """Preset ``name`` (no lips stage) trained within ``budget_s`` on ``device``, evaluated on held-out frames."""
    from jobs.train import load_identity
    from nerf.avatar import evaluate
    from nerf.methods import preset
    from nerf.trainer import Trainer

    cfg = preset(name)
    head, torso = cfg.trainer.head.steps, cfg.trainer.torso.steps
    if pace and name in pace:  # 75% head, 25% torso, as far as the preset's steps go
        head = max(10, min(head, int(0.75 * budget_s / pace[name]["head_s_per_step"])))
        torso = max(10, min(torso, int(0.25 * budget_s / pace[name]["torso_s_per_step"])))
    cfg = with_steps(cfg, head, 0, torso)
    data = load_identity(str(dataset), identity, cfg.trainer.size)
    trainer = Trainer(cfg, data, device)
    t = time.perf_counter()
    while (r := trainer.step()) is not None:
        if r.step % 1000 == 0:
            print(f"  {r.stage} step {r.step} loss {r.loss:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    sync(device)
    train_s = time.perf_counter() - t
    ev = evaluate(trainer)
    trainer.save_checkpoint(out / "checkpoint_gpu.pt")
    res = {"preset": name, "head_steps": head, "torso_steps": torso, "train_s": train_s,
           **{k: ev.metrics[k] for k in ("psnr", "ssim", "render_s_per_frame", "n_frames")}}
    print(f"{name} preset on {device.type}: {head} head + {torso} torso steps in {train_s:.0f} s; held-out PSNR "
          f"{res['psnr']:.2f} dB, SSIM {res['ssim']:.4f} ({int(res['n_frames'])} frames, "
          f"{res['render_s_per_frame'] * 1e3:.0f} ms each)", flush=True)
    return res


def run(args: argparse.Namespace) -> int:
    bundle: Path = args.bundle
    missing = [n for n in ("checkpoint.pt", FEATURES, "dataset", "manifest.json") if not (bundle / n).exists()]
    if missing:
        print(f"gpu.py run: {bundle} is not a bundle (missing {', '.join(missing)}); make it with `gpu.py pack`",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py run: no CUDA device here (torch.cuda.is_available() is False); --device cpu runs the same "
              "parts on the CPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    identity = manifest["identity"]
    results: dict[str, Any] = {
        "bundle": manifest, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(), "errors": {}}
    print(f"{results['device']}, torch {results['torch']}, python {results['python']}, {results['cpus']} CPUs; "
          f"bundle of {identity} from commit {manifest['commit']}", flush=True)

    def write() -> None:
        (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))

    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "kernels": lambda: kernels_part(bundle, device),
        "render": lambda: render_part(bundle, device, args.sizes, args.frames, args.runs, args.groups, out),
        "train": lambda: pace_part(bundle / "dataset", identity, device, args.pace_steps, args.presets),
        "quality": lambda: quality_part(bundle / "dataset", identity, device, args.preset, args.train_budget,
                                        results.get("train"), out),
    }
    for part in args.parts:
        t = time.perf_counter()
        print(f"== {part}", flush=True)
        try:
            results[part] = jobs[part]()
        except Exception as e:  # noqa: BLE001 (one part's failure must not cost the others' figures)
            results["errors"][part] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        results.setdefault("seconds", {})[part] = time.perf_counter() - t
        write()
    prefix = "cuda_" if device.type == "cuda" else f"{device.type}_"
    figures: dict[str, float] = {}
    rend = results.get("render", {})
    for size, v in rend.get("default", {}).items():
        figures[f"fps_{size}"] = v
    if rend.get(f"best_{max(args.sizes)}"):
        figures[f"best_fps_{max(args.sizes)}"] = rend[f"best_{max(args.sizes)}"]["fps"]
    for name, row in results.get("train", {}).items():
        figures[f"{'' if name == args.presets[0] else name + '_'}head_samples_per_s"] = row["head_samples_per_s"]
    if "quality" in results:
        figures["psnr"] = results["quality"]["psnr"]
        figures["train_s"] = results["quality"]["train_s"]
    if results["errors"]:
        print(f"failed parts: {', '.join(results['errors'])} (see {out / 'gpu.json'})", flush=True)
    print(" ".join(f"{prefix}{k}={v:.4g}" if abs(v) < 1e5 else f"{prefix}{k}={v:.0f}" for k, v in figures.items()))
    return 1 if results["errors"] else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="bundle what the device run needs (here)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint to render (default: benchmarks/train.py's or benchmarks/render.py's in --work)")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP,
                   help="the clip the checkpoint was trained on (its dataset goes along; default: %(default)s)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="benchmark work directory (default: %(default)s)")
    p.add_argument("--audio", type=Path, default=SHARED / "data" / "audio" / "RD_Radio31_000.wav",
                   help="driving audio (default: %(default)s)")
    p.add_argument("--frames", type=int, default=50, help="audio frames to bundle (default: %(default)s)")
    p.add_argument("--out", type=Path, default=BUNDLE, help="the bundle (default: %(default)s, git-ignored)")
    r = sub.add_parser("run", help="measure (on the device machine)")
    r.add_argument("--bundle", type=Path, default=BUNDLE, help="what `pack` wrote (default: %(default)s)")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")),
                   help="where gpu.json and the rest go (default: $OUT, else ./gpu_out)")
    r.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    r.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS),
                   help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    r.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[256, 512],
                   help="render sizes (default: 256,512)")
    r.add_argument("--frames", type=int, default=25, help="frames per render run (default: %(default)s)")
    r.add_argument("--runs", type=int, default=3, help="render runs per setting (default: %(default)s)")
    r.add_argument("--groups", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16],
                   help="march_group values of the sweep (default: 1,2,4,8,16)")
    r.add_argument("--pace-steps", type=int, default=40,
                   help="head and torso steps of each preset's pace (default: %(default)s)")
    r.add_argument("--presets", type=lambda s: s.split(","), default=["cpu", "paper"],
                   help="presets whose training pace the train part measures (default: cpu,paper)")
    r.add_argument("--preset", default="cpu", help="preset the quality part trains (default: %(default)s)")
    r.add_argument("--train-budget", type=float, default=180.0,
                   help="seconds of training in the quality part (default: %(default)s)")
    args = ap.parse_args()
    if args.cmd == "pack":
        if args.frames < 2:
            ap.error("--frames must be at least 2")
        pack(args.checkpoint, args.clip, args.work, args.audio, args.frames, args.out)
        return 0
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    from nerf.radnerf.presets import PRESETS

    bad = sorted(set(args.presets + [args.preset]) - set(PRESETS))
    if bad:
        ap.error(f"--presets/--preset: unknown {', '.join(bad)} (presets: {', '.join(PRESETS)})")
    if args.frames < 2 or args.runs < 1 or args.pace_steps <= WARMUP_STEPS:
        ap.error(f"--frames must be >= 2, --runs >= 1 and --pace-steps > {WARMUP_STEPS}")
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
