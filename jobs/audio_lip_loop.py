"""The Ray Train worker of ``parley train-audio``: the landmark autoencoder, then the audio encoder on its frozen
mouth code, then the lip-sync scorer, each data-parallel over the job's workers.

Rank 0 logs each epoch's losses and the held-out metrics to the job's MLflow run and hands both checkpoints back
through ``ray.train.report``; the driver (:mod:`jobs.train_audio`) registers them.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nerf.audio_lip.data import AudioLipData

log = logging.getLogger(__name__)
AUDIO_LIP_FILE = "audio_lip.pt"
SCORER_FILE = "sync_scorer.pt"


def split_clips(data: AudioLipData, val_fraction: float) -> tuple[list[str], list[str]]:
    """Clips for training and for held-out metrics: a clip is held out when a stable hash of its id falls under
    ``val_fraction`` (at least one clip when there are two or more, none when there is one)."""
    def h(c: str) -> float:
        return int(hashlib.sha256(c.encode()).hexdigest()[:8], 16) / 2**32

    val = [c for c in data.clip_ids if h(c) < val_fraction]
    if not val and val_fraction > 0 and len(data.clip_ids) > 1:
        val = [min(data.clip_ids, key=h)]
    if len(val) == len(data.clip_ids):
        val = val[1:]
    return [c for c in data.clip_ids if c not in val], val


def presets(name: str) -> dict[str, Any]:
    """Training settings of a preset: ``default`` (the paper's recipe, sized for a few thousand frames) or
    ``tiny`` (seconds; tests)."""
    from nerf.audio_lip import train as T

    cfg: dict[str, Any] = {"lae": T.LandmarkAETrain(), "encoder": T.AudioLipTrain(), "scorer": T.ScorerTrain()}
    if name == "tiny":
        cfg = {"lae": replace(cfg["lae"], epochs=3), "encoder": replace(cfg["encoder"], epochs=2),
               "scorer": replace(cfg["scorer"], epochs=1, clips_per_batch=4, frames_per_clip=16)}
    elif name != "default":
        raise ValueError(f"audio-lip preset {name!r}: expected default or tiny")
    return cfg


def _wrap(world: int):  # noqa: ANN202
    if world <= 1:
        return None
    from ray.train.torch import prepare_model

    return lambda m: prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": False})


def train_all(data: AudioLipData, job: dict[str, Any], rank: int = 0, world: int = 1,
              on_metrics=None, out_dir: Path | None = None, device: Any = "cpu") -> dict[str, Any]:  # noqa: ANN001
    """Train the three models on ``data`` (held-out clips chosen by :func:`split_clips`) and write their files.

    Returns:
        held-out metrics, the clip split and the seconds each model took.
    """
    from nerf.audio_lip import checkpoint as ck
    from nerf.audio_lip import train as T
    from nerf.audio_lip.data import canonical_landmarks, rigid_template
    from nerf.audio_lip.scoring import offset_accuracy, retrieval_top1, swap_error

    cfg = presets(job.get("preset", "default"))
    seed = int(job.get("seed", 0)) + 1000 * rank
    train_ids, val_ids = split_clips(data, float(job.get("val_fraction", 0.1)))
    tr, va = data.subset(train_ids), data.subset(val_ids)
    template = rigid_template(tr.landmarks[tr.valid])
    ctr, cva = canonical_landmarks(tr.landmarks, template), canonical_landmarks(va.landmarks, template)
    wrap = _wrap(world)
    step = {"n": 0}

    def epoch_cb(epoch: int, m: dict[str, float]) -> None:  # one step per epoch of any of the three models
        step["n"] += 1
        if on_metrics:
            on_metrics(m, step["n"])

    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    lae = T.train_landmark_ae(ctr, tr, cfg["lae"], seed, epoch_cb, wrap, device)
    seconds["lae_s"] = time.perf_counter() - t
    if len(va):
        metrics.update(swap_error(lae, cva, va.spans(), va.valid))
    t = time.perf_counter()
    enc = T.train_audio_encoder(lae, ctr, tr, cfg["encoder"], seed, epoch_cb, wrap, device)
    seconds["encoder_s"] = time.perf_counter() - t
    if len(va):
        metrics["retrieval_top1"] = retrieval_top1(lae, enc, cva, va.mel, va.spans())
    t = time.perf_counter()
    scorer = T.train_scorer(tr, cfg["scorer"], seed, epoch_cb, wrap, device)
    seconds["scorer_s"] = time.perf_counter() - t
    if len(va):
        acc, conf, n = offset_accuracy(scorer, va.crops, va.mel, va.valid, va.spans())
        metrics.update({"offset_acc": acc, "lse_c": conf, "scored_clips": float(n)})
    metrics = {k: float(v) for k, v in metrics.items() if v == v}  # NaN: nothing held out could be scored
    meta = {"dataset": job.get("dataset"), "dataset_version": job.get("dataset_version"), "train_clips": train_ids,
            "val_clips": val_ids, "metrics": metrics, "config": {k: asdict(v) for k, v in cfg.items()},
            "excluded_identities": list(job.get("exclude", []))}
    if out_dir is not None and rank == 0:
        ck.save(ck.AudioLipBundle(lae, enc, template, meta).state(), out_dir / AUDIO_LIP_FILE)
        ck.save(ck.scorer_state(scorer, meta), out_dir / SCORER_FILE)
    return {"metrics": metrics, "seconds": seconds, "train_clips": train_ids, "val_clips": val_ids,
            "frames": int(tr.valid.sum())}


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: load the dataset, train, report the checkpoint (rank 0)."""
    import ray.train
    import ray.train.torch
    import torch

    from jobs.audio_lip_data import load_audio_lip_data
    from jobs.tracking import client
    from pipelines import ray_env

    ray_env.apply(config.get("env"))
    job, run = config["job"], config["run"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    data = load_audio_lip_data(job["dataset"], job.get("s3_endpoint"), tuple(job.get("exclude", [])),
                               job.get("cache_dir"))
    mlflow = client(run["tracking_uri"]) if rank == 0 else None

    def log_metrics(m: dict[str, float], step: int) -> None:
        if mlflow is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            mlflow.log_batch(run["run_id"], metrics=[Metric(k, float(v), ts, step) for k, v in m.items()])

    with tempfile.TemporaryDirectory() as tmp:
        device = ray.train.torch.get_device() if job.get("use_gpu") else "cpu"
        result = train_all(data, job, rank, world, log_metrics, Path(tmp), device)
        flat = {**result["metrics"], **result["seconds"], "frames": result["frames"]}
        if rank == 0:
            mlflow.log_dict(run["run_id"], {"train_clips": result["train_clips"],  # type: ignore[union-attr]
                                            "val_clips": result["val_clips"]}, "split.json")
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(flat)
