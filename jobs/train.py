"""``parley train`` / ``evaluate`` / ``render``: one identity's avatar on this machine (no Ray, no MLflow).

Library functions (:func:`train_identity`, :func:`evaluate_checkpoint`, :func:`render_audio`) hold the
work; the ``run_*_cli`` functions parse nothing and only print.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.train_args import MAX_RENDER_SECONDS
from nerf.avatar import AudioError, Avatar, EvalResult, evaluate, side_by_side
from nerf.data import DataError, IdentityFrames
from nerf.metrics import LPIPS
from nerf.presets import preset
from nerf.trainer import CheckpointError, ExperimentConfig, StepResult, Trainer, config_to_json, load_checkpoint
from pipelines.dataset import Dataset
from pipelines.storage import S3Options
from workers import assets
from workers.errors import ClipError

CHECKPOINT = "checkpoint.pt"
EVAL_JSON = "eval.json"
EVAL_VIDEO = "eval_side_by_side.mp4"
QC_DIR = "qc"
"""Side-by-side PNGs (prediction | ground truth) of the first, middle and last held-out frames."""
LOG = "train_log.jsonl"


@dataclass
class TrainJob:
    """One identity, one recipe, one output directory."""

    dataset: str
    """Dataset root (directory or ``s3://``)."""
    identity: str
    output: Path
    """Run directory: checkpoint, log, evaluation."""
    preset: str = "cpu"
    device: str = "cpu"
    s3_endpoint: str | None = None
    steps_scale: float = 1.0
    """Multiply every stage's steps (e.g. 0.1 for a quick look)."""
    evaluate: bool = True
    """Evaluate the held-out frames at the end (JSON + side-by-side video)."""
    max_frames: int | None = None
    """Use only the first frames of the identity."""
    threads: int | None = None
    """torch threads (default: torch's)."""


def recipe(job: TrainJob) -> ExperimentConfig:
    """The job's preset with its overrides applied."""
    cfg = preset(job.preset)
    tc = cfg.trainer
    if job.steps_scale != 1.0:
        def scaled(s):  # noqa: ANN001, ANN202
            return replace(s, steps=max(int(round(s.steps * job.steps_scale)), 1 if s.steps else 0))

        tc = replace(tc, head=scaled(tc.head), lips=scaled(tc.lips), torso=scaled(tc.torso))
    if job.max_frames is not None:
        tc = replace(tc, max_frames=job.max_frames)
    return replace(cfg, trainer=tc)


def load_identity(dataset: str, identity: str, size: int, s3_endpoint: str | None = None,
                  max_frames: int | None = None) -> IdentityFrames:
    """Read one identity's frames from a dataset at a training size.

    Raises:
        KeyError: the identity is not in the dataset (the known ones are named).
        DataError: the identity has no usable frames or no background.
        FileNotFoundError: the dataset does not exist.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint))
    if not ds.storage.exists("clips") and not ds.storage.exists("frames"):
        raise FileNotFoundError(f"{dataset}: not a dataset (no clips/ or frames/); run `parley build-dataset` first")
    ds.identity_clips(identity)  # KeyError naming the known identities, before identities/ is read
    data = IdentityFrames.from_batches(lambda columns: ds.iter_frames(identity, columns), ds.identity(identity),
                                       size, max_frames=max_frames)
    data.version = ds.identity_version(identity)
    # Arrow's allocator keeps the read buffers for reuse; training allocates through torch, which cannot use them
    # (~250 MB at 2,000 frames)
    pa.default_memory_pool().release_unused()
    return data


def lpips_module() -> LPIPS:
    """LPIPS with the AlexNet weights from the asset manager (``PARLEY_ASSETS``, cache, or download)."""
    return LPIPS(assets.resolve("alexnet_features"))


def landmark_fn():  # noqa: ANN201
    """Functions image -> 68 landmarks (or None) for LMD with the MediaPipe backend, and their closer.

    Predictions and ground truth get a landmarker each, so each sees one consecutive stream of frames
    (MediaPipe's video mode tracks between frames).
    """
    from workers.landmarks import MediaPipeLandmarker

    streams = {"pred": MediaPipeLandmarker(max_faces=1), "gt": MediaPipeLandmarker(max_faces=1)}
    clock = {"pred": 0, "gt": 0}

    def detector(name: str):  # noqa: ANN202
        def detect(img: np.ndarray) -> np.ndarray | None:
            clock[name] += 40
            faces = streams[name].detect(np.ascontiguousarray(img), clock[name])
            return faces[0].landmarks_68 if faces else None

        return detect

    def close() -> None:
        for lm in streams.values():
            lm.close()

    return detector("pred"), detector("gt"), close


def train_identity(job: TrainJob, on_step=None, on_checkpoint=None, should_stop=None,  # noqa: ANN001
                   config: ExperimentConfig | None = None) -> dict[str, Any]:
    """Train (or resume) one identity through head -> lips -> torso, then evaluate it.

    A checkpoint in ``job.output`` of the same recipe and identity is resumed; one of another recipe is an
    error (use another output directory).

    Args:
        job: what to train.
        on_step: called with each :class:`StepResult`.
        on_checkpoint: called with (checkpoint path, trainer) after each checkpoint is written.
        should_stop: polled after every step; True stops after a checkpoint.
        config: the recipe (default: :func:`recipe` of ``job``).

    Returns:
        ``checkpoint`` path, ``config`` (JSON), ``steps``, ``seconds`` and, when evaluated, ``metrics``.

    Raises:
        KeyError, DataError, FileNotFoundError: see :func:`load_identity`; CheckpointError: a foreign checkpoint.
    """
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    cfg = config or recipe(job)
    data = load_identity(job.dataset, job.identity, cfg.trainer.size, job.s3_endpoint, cfg.trainer.max_frames)
    lips = lpips_module() if cfg.trainer.lips.steps or job.evaluate else None
    trainer = Trainer(cfg, data, device=job.device, lips_loss=lips)
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    resumed = ckpt.exists()
    if resumed:
        trainer.load_checkpoint(ckpt)
    (out / "config.json").write_text(json.dumps(json.loads(config_to_json(cfg)), indent=2))
    t0 = time.perf_counter()
    with open(out / LOG, "a") as log:
        def step(r: StepResult) -> None:
            log.write(json.dumps({"stage": r.stage, "step": r.step, "global_step": r.global_step, "loss": r.loss,
                                  "lr": r.lr, "samples": r.samples, "seconds": r.seconds, **r.losses}) + "\n")
            if on_step is not None:
                on_step(r)

        def checkpointed(path: Path) -> None:
            if on_checkpoint is not None:
                on_checkpoint(path, trainer)

        trainer.train(ckpt, on_step=step, on_checkpoint=checkpointed, should_stop=should_stop)
    result: dict[str, Any] = {"checkpoint": str(ckpt), "config": config_to_json(cfg), "resumed": resumed,
                              "steps": trainer.global_step, "seconds": time.perf_counter() - t0,
                              "identity": job.identity, "n_train": data.n_train, "n_val": len(data.val_ids)}
    if not trainer.done:
        trainer.save_checkpoint(ckpt)
        return result
    if job.evaluate:
        res = _evaluate(trainer, lips, out)
        result["metrics"] = res.metrics
    return result


def _evaluate(trainer: Trainer, lips: LPIPS | None, out: Path, align_poses: bool = False) -> EvalResult:
    import cv2

    from workers.media import VideoWriter

    detect_pred, detect_gt, close = landmark_fn()
    s = trainer.data.size
    even = s + (s % 2)
    val = trainer.data.val_ids
    qc_frames = {int(val[0]), int(val[len(val) // 2]), int(val[-1])} if len(val) else set()
    (out / QC_DIR).mkdir(exist_ok=True)
    try:
        with VideoWriter(out / EVAL_VIDEO, fps=25.0, size=(2 * even, even)) as video:
            def frame(f: int, pred: np.ndarray, gt: np.ndarray) -> None:
                img = side_by_side(pred, gt)
                video.write(np.pad(img, ((0, even - s), (0, 2 * even - 2 * s), (0, 0))))
                if f in qc_frames:
                    cv2.imwrite(str(out / QC_DIR / f"heldout_{f:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

            res = evaluate(trainer, lpips=lips, landmarks=(detect_pred, detect_gt), on_frame=frame,
                           align_poses=align_poses)
    finally:
        close()
    (out / EVAL_JSON).write_text(json.dumps({"identity": trainer.data.identity, "metrics": res.metrics,
                                             "frames": res.per_frame}, indent=2))
    return res


def evaluate_checkpoint(checkpoint: str | Path, dataset: str, output: str | Path, s3_endpoint: str | None = None,
                        device: str = "cpu", align_poses: bool = False) -> EvalResult:
    """Evaluate a checkpoint on its identity's held-out frames: ``eval.json`` and the side-by-side video
    (``align_poses``: also the PSNR under test-time aligned head poses, :func:`nerf.avatar.evaluate`).

    Raises:
        CheckpointError, KeyError, DataError: see :func:`load_checkpoint` and :func:`load_identity`.
    """
    from nerf.trainer import config_from_json

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_json(ckpt["config"])
    data = load_identity(dataset, str(ckpt["identity"]), cfg.trainer.size, s3_endpoint, cfg.trainer.max_frames)
    lips = lpips_module()
    trainer = Trainer(cfg, data, device=device, lips_loss=lips)
    trainer.load_checkpoint(checkpoint)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    return _evaluate(trainer, lips, out, align_poses)


def render_audio(checkpoint: str | Path, audio: str | Path, out: str | Path, size: int | None = None,
                 fps: float = 25.0, device: str = "cpu", progress: bool = False,
                 max_seconds: float | None = MAX_RENDER_SECONDS) -> dict[str, Any]:
    """Render an avatar speaking an audio file: an mp4 with the audio muxed in.

    Audio features are computed exactly as in the dataset build (:func:`workers.audio.frame_features`),
    one video frame per ``1 / fps`` s of audio; head pose and blinks walk the training frames back and forth.
    The output path and the audio's length are checked before anything is rendered.

    Args:
        max_seconds: longest audio accepted (None: no limit).

    Returns:
        ``video``, ``frames``, ``seconds``, ``fps`` (rendered frames per second).

    Raises:
        CheckpointError: see :func:`load_checkpoint`; ClipError: the file has no decodable audio;
        AudioError: the audio has no samples, or is longer than ``max_seconds``; ValueError: ``out`` is a
        directory or its folder cannot be created.
    """
    from workers.audio import frame_features
    from workers.config import AudioFeatureConfig
    from workers.media import VideoWriter, read_audio

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give the mp4 file to write (e.g. {out / 'speech.mp4'})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create its folder ({exc.strerror})") from exc
    avatar = Avatar.from_checkpoint(checkpoint, device)
    acfg = AudioFeatureConfig()
    samples = read_audio(audio, acfg.sample_rate)
    if samples.size == 0:
        raise AudioError(f"{audio}: the audio stream has no samples; nothing to render")
    if max_seconds is not None and samples.size / acfg.sample_rate > max_seconds:
        raise AudioError(f"{audio}: {samples.size / acfg.sample_rate:.0f} s of audio, more than the "
                         f"{max_seconds:.0f} s limit (--max-seconds); cut it or raise the limit")
    n = int(math.ceil(samples.size / acfg.sample_rate * fps))
    feats = frame_features(samples, n, fps, acfg).mel
    size = size or int(avatar.kit["size"])
    if size % 2:
        raise ValueError(f"size must be even for H.264 video, got {size}")
    # on a terminal one line updated every second; in a log (ray job logs, CI) a line every 10 s
    tty = sys.stderr.isatty()
    every, start, end = (1.0, "\r", "") if tty else (10.0, "", "\n")
    t0 = last = time.perf_counter()
    with VideoWriter(out, fps=fps, size=(size, size), audio=audio) as video:
        for k, frame in enumerate(avatar.render(feats, size=size)):
            video.write(frame)
            done = k + 1
            if progress and (time.perf_counter() - last > every or done == n):
                last = time.perf_counter()
                rate = done / (last - t0)
                print(f"{start}render {done}/{n} frames ({rate:.1f} frames/s, "
                      f"{(n - done) / rate:.0f} s left)", end=end, file=sys.stderr, flush=True)
    if progress and tty:
        print(file=sys.stderr)
    secs = time.perf_counter() - t0
    return {"video": str(out), "frames": n, "seconds": secs, "fps": n / secs if secs else float("inf")}


# CLI -----------------------------------------------------------------------------------------------------------
def _fail(cmd: str, exc: BaseException) -> int:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    print(f"{cmd}: {msg}", file=sys.stderr)
    return 2


def run_train_cli(args: argparse.Namespace) -> int:
    """Local mode of ``parley train`` (``--output`` given): one identity on this machine."""
    if not args.identity:
        print("train: --output (local mode) needs --identity; without --output, identities train on Ray",
              file=sys.stderr)
        return 2
    job = TrainJob(dataset=args.dataset, identity=args.identity, output=Path(args.output),
                   preset=args.preset or "cpu", device=args.device, s3_endpoint=args.s3_endpoint,
                   steps_scale=args.steps_scale if args.steps_scale is not None else 1.0,
                   evaluate=not args.no_eval, max_frames=args.max_frames, threads=args.threads)
    total = recipe(job).trainer
    n_total = total.head.steps + total.lips.steps + total.torso.steps
    last = [0.0]

    def progress(r: StepResult) -> None:
        now = time.perf_counter()
        if now - last[0] > 5 or r.global_step == n_total:
            last[0] = now
            print(f"[{r.global_step}/{n_total}] {r.stage} step {r.step} loss {r.loss:.4f} lr {r.lr:.2e} "
                  f"{r.samples / max(r.seconds, 1e-9) / 1e6:.2f} M samples/s", file=sys.stderr, flush=True)

    try:
        result = train_identity(job, on_step=progress)
    except (KeyError, DataError, FileNotFoundError, CheckpointError, ValueError) as exc:
        return _fail("train", exc)
    print(f"trained {job.identity}: {result['steps']} steps in {result['seconds']:.0f} s -> {result['checkpoint']}")
    if "metrics" in result:
        m = result["metrics"]
        print(f"held-out ({int(m['n_frames'])} frames): PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
              f"LPIPS {m.get('lpips', float('nan')):.3f}, LMD {m['lmd']:.2f} px, "
              f"{m['render_s_per_frame']:.2f} s/frame -> {job.output / EVAL_JSON}, {job.output / EVAL_VIDEO}")
    return 0


def _registered_checkpoint(cmd: str, args: argparse.Namespace, dst: str) -> Path:
    """``--model models:/...``: the version's checkpoint downloaded into ``dst`` (tensors only, never its code).

    Raises:
        RegistryError, TrackingError, ValueError, CheckpointError: see :func:`jobs.registry.fetch_checkpoint`.
    """
    from jobs import registry, tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_tracking(uri)
    checkpoint, info = registry.fetch_checkpoint(uri, args.model, dst)
    print(f"{cmd}: {args.model} -> {info.name} version {info.version} (run {info.run_id}; "
          + ", ".join(f"{k} {v:.3g}" for k, v in info.metrics.items()) + ")", file=sys.stderr)
    return checkpoint


def run_evaluate_cli(args: argparse.Namespace) -> int:
    """``parley evaluate``: a checkpoint file (``--checkpoint``) or a registered version's (``--model``)."""
    try:
        with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
            checkpoint = _registered_checkpoint("evaluate", args, tmp) if args.model else args.checkpoint
            res = evaluate_checkpoint(checkpoint, args.dataset, args.output, args.s3_endpoint, args.device,
                                      align_poses=args.align_poses)
    except (LookupError, DataError, FileNotFoundError, CheckpointError, ValueError, RuntimeError) as exc:
        return _fail("evaluate", exc)
    print(json.dumps(res.metrics, indent=2))
    return 0


def run_render_cli(args: argparse.Namespace) -> int:
    """``parley render``: a checkpoint file (``--checkpoint``) or a registered version's (``--model``)."""
    try:
        with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
            checkpoint = _registered_checkpoint("render", args, tmp) if args.model else args.checkpoint
            r = render_audio(checkpoint, args.audio, args.out, size=args.size, device=args.device, progress=True,
                             max_seconds=args.max_seconds if args.max_seconds > 0 else None)
    except (CheckpointError, ClipError, AudioError, ValueError, LookupError, RuntimeError) as exc:
        return _fail("render", exc)
    print(f"rendered {r['frames']} frames in {r['seconds']:.1f} s ({r['fps']:.1f} frames/s) -> {r['video']}")
    return 0
