"""``parley train`` (local mode) / ``evaluate``: one identity's avatar on this machine (no Ray, no MLflow).

Library functions (:func:`train_identity`, :func:`evaluate_checkpoint`) hold the work; the ``run_*_cli``
functions parse nothing and only print. Rendering is :mod:`jobs.render`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jobs import learnt_audio
from jobs.errors import fail
from jobs.eval_sync import SyncEvaluator, resolve_scorer
from jobs.fanout_config import apply_overrides, parse_sets
from jobs.method_eval import method_metrics
from nerf import methods
from nerf.avatar import EvalResult, evaluate, side_by_side
from nerf.checkpoint import CheckpointError, load_checkpoint, require_method
from nerf.config import DEFAULT_METHOD, ExperimentConfig, config_from_json, config_to_json
from nerf.data import DataError, IdentityFrames
from nerf.metrics import LPIPS
from nerf.trainer import StepResult, Trainer
from pipelines.dataset import Dataset
from pipelines.storage import S3Options
from workers import assets

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
    preset: str | None = None
    """The method's preset (None: its default)."""
    method: str = DEFAULT_METHOD
    """The avatar method (:mod:`nerf.methods`)."""
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
    tracking_uri: str | None = None
    """Where a recipe's ``model.head.audio.source`` (a registered ``audio-lip`` version) is looked up."""
    audio_source: str | None = None
    """Sets ``model.head.audio.source``: the avatar's audio net is that registered ``audio-lip`` version's encoder."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields by dotted key (``--set model.features=crop``), applied last."""


def recipe(job: TrainJob) -> ExperimentConfig:
    """The job's method and preset with its overrides applied.

    Raises:
        KeyError: an unknown method or preset (the known ones are named); FanoutError (a ValueError): an override
            of a field that does not exist, or a value it cannot take.
    """
    cfg = methods.preset(job.preset, job.method)
    if job.audio_source:
        if not learnt_audio.audio_source_settable(cfg):
            raise ValueError(f"--audio-source: the {job.method} method has no audio net to replace")
        cfg = learnt_audio.with_source(cfg, job.audio_source)
    tc = cfg.trainer
    if job.steps_scale != 1.0:
        tc = tc.scaled(job.steps_scale)
    if job.max_frames is not None:
        tc = replace(tc, max_frames=job.max_frames)
    return apply_overrides(replace(cfg, trainer=tc), job.overrides)


def load_identity(dataset: str, identity: str, size: int, s3_endpoint: str | None = None,
                  max_frames: int | None = None, holdout: float | None = None) -> IdentityFrames:
    """Read one identity's frames from a dataset at a training size (``holdout``: the fraction of its last frames
    held out, default :data:`pipelines.schema.HOLDOUT_FRACTION`).

    Raises:
        KeyError: the identity is not in the dataset (the known ones are named).
        DataError: the identity has no usable frames or no background.
        FileNotFoundError: the dataset does not exist.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    ds.identity_clips(identity)  # KeyError naming the known identities, before identities/ is read
    data = IdentityFrames.from_batches(lambda columns: ds.iter_frames(identity, columns), ds.identity(identity),
                                       size, max_frames=max_frames,
                                       **({"holdout": holdout} if holdout is not None else {}))
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
    """Train (or resume) one identity through its method's stages, then evaluate it.

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
    cfg, pinned = learnt_audio.pin(config or recipe(job), job.tracking_uri)
    out = Path(job.output)
    ckpt = out / CHECKPOINT
    resumed = ckpt.exists()
    model_cls = methods.get(cfg.method).model
    pretrained = learnt_audio.weights(cfg, job.tracking_uri, str(model_cls.audio_net_key)) \
        if pinned and not resumed and model_cls.audio_net_key else None
    if pinned and not model_cls.audio_net_key:
        raise ValueError(f"the {cfg.method} method takes no learnt audio encoder (model.head.audio.source)")
    data = load_frames(cfg.method, job.dataset, job.identity, cfg.trainer.size, job.s3_endpoint,
                       cfg.trainer.max_frames)
    if getattr(cfg.model, "warm_start", "") and not resumed:  # a dialogue model starting from a joint network
        from jobs.dialogue_data import warm_start_weights

        pretrained = {**(pretrained or {}), **warm_start_weights(cfg, data.n_people, job.tracking_uri)}
    if model_cls.extra_inputs and not resumed:  # parts a method trains before its field (JEAN's transformer)
        inputs = read_extra_inputs(model_cls.extra_inputs, job, cfg, data)
        pretrained = model_cls.prepare(cfg, data, inputs, pretrained or {})
    lips = lpips_module() if model_cls.needs_lpips(cfg) or job.evaluate else None
    trainer = Trainer(cfg, data, device=job.device, lpips=lips, pretrained=pretrained)
    out.mkdir(parents=True, exist_ok=True)
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
    result: dict[str, Any] = {"checkpoint": str(ckpt), "config": config_to_json(cfg), "resumed": resumed, **pinned,
                              "steps": trainer.global_step, "seconds": time.perf_counter() - t0,
                              "identity": job.identity, "n_train": data.n_train, "n_val": len(data.val_ids)}
    if not trainer.done:
        trainer.save_checkpoint(ckpt)
        return result
    if job.evaluate:
        res = _evaluate(trainer, lips, out, extra=method_metrics(cfg.method, job.dataset, job.s3_endpoint))
        result["metrics"] = res.metrics
    return result


def load_frames(method: str, dataset: str, subject: str, size: int, s3_endpoint: str | None = None,
                max_frames: int | None = None, holdout: float | None = None) -> IdentityFrames:
    """What a method trains on: one identity's frames (:func:`load_identity`), or, for a method of several people
    (:attr:`nerf.model.AvatarModel.several_people`), the merged frames of the people ``subject`` names (a
    conversation, or identities joined by ``+``; :func:`jobs.dialogue_data.load_people`).

    Raises:
        KeyError, DataError, FileNotFoundError, ValueError: see the two loaders.
    """
    if not methods.get(method).model.several_people:
        return load_identity(dataset, subject, size, s3_endpoint, max_frames, holdout)
    from jobs.dialogue_data import load_people

    return load_people(dataset, subject, lambda name: load_identity(dataset, name, size, s3_endpoint, max_frames,
                                                                    holdout), s3_endpoint)


def read_extra_inputs(names: tuple[str, ...], job: TrainJob, cfg: ExperimentConfig,
                      data: IdentityFrames) -> dict[str, np.ndarray]:
    """A method's extra per-frame inputs (:attr:`nerf.model.AvatarModel.extra_inputs`), one row per frame of
    ``data`` each.

    Raises:
        ValueError: an input this platform cannot read.
    """
    from jobs import dialogue_data

    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "expression_features":
            from jobs.jean_data import frame_features

            out[name] = frame_features(job.dataset, job.identity, data.clip_ids, data.frame_index,
                                       str(cfg.model.features), job.s3_endpoint)
        elif name in dialogue_data.INPUTS:
            if name not in out:
                out.update(dialogue_data.frame_inputs(job.dataset, data, job.s3_endpoint))
        else:
            raise ValueError(f"the {cfg.method} method asks for a per-frame input {name!r} that parley cannot read")
    return {k: out[k] for k in names}


def _evaluate(trainer: Trainer, lips: LPIPS | None, out: Path, align_poses: bool = False,
              sync: SyncEvaluator | None = None, extra: Callable[[Trainer], dict[str, float]] | None = None
              ) -> EvalResult:
    import cv2

    from workers.video_writer import VideoWriter

    sync = sync or SyncEvaluator()
    detect_pred, detect_gt, close = landmark_fn()
    detect_pred, detect_gt = sync.wrap(detect_pred, detect_gt)
    s = trainer.data.size
    even = s + (s % 2)
    val = trainer.data.val_ids
    qc_frames = {int(val[0]), int(val[len(val) // 2]), int(val[-1])} if len(val) else set()
    (out / QC_DIR).mkdir(exist_ok=True)
    try:
        with VideoWriter(out / EVAL_VIDEO, fps=25.0, size=(2 * even, even)) as video:
            def frame(f: int, pred: np.ndarray, gt: np.ndarray) -> None:
                sync.on_frame(f, pred, gt)
                img = side_by_side(pred, gt)
                video.write(np.pad(img, ((0, even - s), (0, 2 * even - 2 * s), (0, 0))))
                if f in qc_frames:
                    cv2.imwrite(str(out / QC_DIR / f"heldout_{f:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

            res = evaluate(trainer, lpips=lips, landmarks=(detect_pred, detect_gt), on_frame=frame,
                           align_poses=align_poses)
    finally:
        close()
    d = trainer.data
    clip_of_row = np.unique(np.asarray(d.clip_ids), return_inverse=True)[1] if len(d.clip_ids) == len(d.audio) \
        else np.zeros(len(d.audio), np.int64)
    res.metrics.update(sync.metrics(d.audio, clip_of_row))
    for group, mask in trainer.model.evaluation_groups(d).items():  # e.g. a dialogue's speaker frames
        res.metrics.update({f"{k}_{group}": v for k, v in sync.metrics(d.audio, clip_of_row, mask).items()})
    if extra is not None:
        res.metrics.update(extra(trainer))
    (out / EVAL_JSON).write_text(json.dumps({"identity": d.identity, "metrics": res.metrics, "frames": res.per_frame,
                                             "protocol": sync.protocol(d.size, len(res.per_frame))}, indent=2))
    return res


def evaluate_checkpoint(checkpoint: str | Path, dataset: str, output: str | Path, s3_endpoint: str | None = None,
                        device: str = "cpu", align_poses: bool = False, method: str | None = None,
                        sync: SyncEvaluator | None = None) -> EvalResult:
    """Evaluate a checkpoint on its identity's held-out frames: ``eval.json`` and the side-by-side video
    (``align_poses``: also the PSNR under test-time aligned head poses, :func:`nerf.avatar.evaluate`).

    Args:
        method: the method the checkpoint must be of (None: whichever it names).
        sync: carries the lip-sync scorer (:mod:`jobs.eval_sync`); without one, only CPBD is added.

    Raises:
        CheckpointError, KeyError, DataError: see :func:`load_checkpoint` and :func:`load_identity`.
    """
    ckpt = load_checkpoint(checkpoint)
    require_method(checkpoint, ckpt["method"], method)
    cfg = config_from_json(ckpt["config"])
    data = load_frames(cfg.method, dataset, str(ckpt["identity"]), cfg.trainer.size, s3_endpoint,
                       cfg.trainer.max_frames)
    lips = lpips_module()
    trainer = Trainer(cfg, data, device=device, lpips=lips)
    trainer.load_checkpoint(checkpoint)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    return _evaluate(trainer, lips, out, align_poses, sync, method_metrics(cfg.method, dataset, s3_endpoint))



# CLI -----------------------------------------------------------------------------------------------------------
def run_train_cli(args: argparse.Namespace) -> int:
    """Local mode of ``parley train`` (``--output`` given): one identity on this machine."""
    if not args.identity:
        print("train: --output (local mode) needs --identity; without --output, identities train on Ray",
              file=sys.stderr)
        return 2
    job = TrainJob(dataset=args.dataset, identity=args.identity, output=Path(args.output),
                   preset=args.preset, method=args.method or DEFAULT_METHOD, device=args.device,
                   s3_endpoint=args.s3_endpoint,
                   steps_scale=args.steps_scale if args.steps_scale is not None else 1.0,
                   evaluate=not args.no_eval, max_frames=args.max_frames, threads=args.threads,
                   audio_source=args.audio_source, tracking_uri=args.tracking_uri)
    try:
        job = replace(job, overrides=parse_sets(args.overrides))
        n_total = recipe(job).trainer.total_steps()
    except (KeyError, ValueError) as exc:
        return fail("train", exc)
    last = [0.0]

    def progress(r: StepResult) -> None:
        now = time.perf_counter()
        if now - last[0] > 5 or r.global_step == n_total:
            last[0] = now
            print(f"[{r.global_step}/{n_total}] {r.stage} step {r.step} loss {r.loss:.4f} lr {r.lr:.2e} "
                  f"{r.samples / max(r.seconds, 1e-9) / 1e6:.2f} M samples/s", file=sys.stderr, flush=True)

    try:
        result = train_identity(job, on_step=progress)
    except (LookupError, DataError, FileNotFoundError, CheckpointError, ValueError) as exc:
        return fail("train", exc)
    print(f"trained {job.identity}: {result['steps']} steps in {result['seconds']:.0f} s -> {result['checkpoint']}")
    if "metrics" in result:
        m = result["metrics"]
        print(f"held-out ({int(m['n_frames'])} frames): PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
              f"LPIPS {m.get('lpips', float('nan')):.3f}, LMD {m['lmd']:.2f} px, "
              f"{m['render_s_per_frame']:.2f} s/frame -> {job.output / EVAL_JSON}, {job.output / EVAL_VIDEO}")
    return 0


def run_evaluate_cli(args: argparse.Namespace) -> int:
    """``parley evaluate``: a checkpoint file (``--checkpoint``) or a registered version's (``--model``)."""
    from jobs.registry_cli import registered_checkpoint

    try:
        with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
            checkpoint = registered_checkpoint("evaluate", args, tmp) if args.model else args.checkpoint
            scorer, source = (None, "") if args.no_sync else resolve_scorer(
                args.sync_model, args.sync_checkpoint, args.tracking_uri,
                required=bool(args.sync_model or args.sync_checkpoint))
            res = evaluate_checkpoint(checkpoint, args.dataset, args.output, args.s3_endpoint, args.device,
                                      align_poses=args.align_poses, method=args.method,
                                      sync=SyncEvaluator(scorer, source))
    except (LookupError, DataError, FileNotFoundError, CheckpointError, ValueError, RuntimeError) as exc:
        return fail("evaluate", exc)
    print(json.dumps(res.metrics, indent=2))
    return 0
