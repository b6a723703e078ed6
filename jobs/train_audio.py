"""``parley train-audio``: the dataset-wide audio-lip models on Ray Train, tracked in MLflow, registered.

One MLflow run trains the landmark autoencoder, the contrastive audio encoder and the lip-sync scorer
(:mod:`jobs.audio_lip_loop`) on every committed frame of a dataset, and registers two models: ``audio-lip``
(autoencoder + encoder, what avatars are conditioned on) and ``lip-sync-scorer`` (what evaluations score with).
The first version of each gets the ``champion`` alias, so ``parley sync-score`` works right after; later versions
are promoted with ``parley registry promote --model NAME``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs import tracking
from jobs.audio_lip_loop import AUDIO_LIP_FILE, SCORER_FILE, presets
from jobs.registry import CHAMPION, CHECKPOINT_IN_MODEL, METRICS

AUDIO_LIP_MODEL = "audio-lip"
SCORER_MODEL = "lip-sync-scorer"
KIND = "audio-lip"
"""``parley.kind`` tag of the run."""
_VERSION_METRICS = {AUDIO_LIP_MODEL: ("swap_l1", "recon_l1", "retrieval_top1"),
                    SCORER_MODEL: ("offset_acc", "lse_c", "scored_clips")}


class AudioTrainError(RuntimeError):
    """The training job failed on its workers (the worker's own error, in one line)."""


@dataclass
class AudioTrainJob:
    dataset: str
    tracking_uri: str | None = None
    experiment: str | None = None
    s3_endpoint: str | None = None
    exclude: list[str] = field(default_factory=list)
    """Identities left out of training (the avatars these models will be measured on)."""
    val_fraction: float = 0.1
    """Share of clips held out for the registered metrics (by a stable hash of the clip id)."""
    preset: str = "default"
    seed: int = 0
    num_workers: int = 1
    cpus_per_worker: float | None = None
    """Default: the cluster's CPUs shared among the workers."""
    use_gpu: bool | None = None
    """Default: when the cluster has GPUs."""
    ray_address: str | None = None
    storage: str | None = None
    """Ray Train storage (default: Ray's, ``~/ray_results``)."""
    cache_dir: str | None = None
    """Where the decoded arrays are cached between runs (default ``~/.cache/parley/audio_lip``)."""
    register: bool = True


def _register(uri: str, run_id: str, name: str, metrics: dict[str, float], tags: dict[str, str]) -> int:
    """A new version of a dataset-wide model from ``<run artifacts>/<name>``; the first version becomes champion."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(uri)
    try:
        c.create_registered_model(name, tags={"parley.kind": KIND}, description=f"{name} (parley train-audio)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{name}"
    vtags = {k: f"{metrics[k]:.6g}" for k in _VERSION_METRICS[name] if k in metrics}
    mv = c.create_model_version(name, source, run_id=run_id, tags={**vtags, **tags})
    if CHAMPION not in (c.get_registered_model(name).aliases or {}):
        c.set_registered_model_alias(name, CHAMPION, str(mv.version))
    return int(mv.version)


def _log_checkpoint(uri: str, run_id: str, path: Path, name: str) -> None:
    """Log a file as ``<name>/artifacts/checkpoint.pt``, where :func:`jobs.registry.fetch_checkpoint` reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / Path(CHECKPOINT_IN_MODEL).name
        shutil.copy2(path, dst)
        tracking.client(uri).log_artifact(run_id, str(dst), f"{name}/{Path(CHECKPOINT_IN_MODEL).parent}")


def run_train_audio(job: AudioTrainJob) -> dict[str, Any]:
    """Train, log and register; returns the run id, the held-out metrics, the registered versions, the seconds.

    Raises:
        tracking.TrackingError: the tracking server cannot be reached.
        FileNotFoundError: no dataset at ``job.dataset``.
        ValueError: an unknown preset, or nothing left to train on.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.audio_lip_loop import worker_loop
    from pipelines import ray_env
    from pipelines.dataset import Dataset
    from pipelines.storage import S3Options, Storage

    presets(job.preset)  # an unknown preset fails before anything starts
    dataset = Storage(job.dataset, S3Options(endpoint_url=job.s3_endpoint)).uri
    Dataset(dataset, S3Options(endpoint_url=job.s3_endpoint)).require()
    uri = tracking.resolve_tracking_uri(job.tracking_uri)
    tracking.check_store_location(uri, defaulted=tracking.is_default_store(job.tracking_uri))
    tracking.check_tracking(uri)
    version, commit = tracking.dataset_version(dataset, job.s3_endpoint), tracking.git_commit()
    exp_id = tracking.experiment_id(uri, dataset, job.experiment)
    c = tracking.client(uri)
    run = c.create_run(exp_id, run_name=f"train-audio-{time.strftime('%Y%m%d-%H%M%S')}",
                       tags={"parley.kind": KIND, "dataset_version": version, "git_commit": commit})
    run_id = run.info.run_id
    cfg = presets(job.preset)
    params = {**{k: v for k, v in asdict(job).items() if k not in ("tracking_uri",)}, "dataset": dataset,
              "dataset_version": version, "git_commit": commit, **{k: asdict(v) for k, v in cfg.items()}}
    from mlflow.entities import Param

    items = [Param(k, tracking.param_value(v)) for k, v in tracking.flatten(params).items()]
    for k in range(0, len(items), 100):
        c.log_batch(run_id, params=items[k:k + 100])
    started = time.perf_counter()
    status = "FAILED"
    try:
        if not ray.is_initialized():
            ray.init(address=job.ray_address)
        gpu = bool(job.use_gpu if job.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0)
        cpus = job.cpus_per_worker or max(1.0, float(ray.cluster_resources().get("CPU", 1)) // job.num_workers)
        env = {**ray_env.forwarded_env(("PARLEY_", "AWS_")),
               **{k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}}
        if env.get("PARLEY_ASSETS"):
            env["PARLEY_ASSETS"] = str(Path(env["PARLEY_ASSETS"]).expanduser().resolve())
        cache = job.cache_dir or str(Path("~/.cache/parley/audio_lip").expanduser())
        job_dict = {**asdict(job), "dataset": dataset, "dataset_version": version, "cache_dir": cache,
                    "threads": int(cpus), "use_gpu": gpu}
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"job": job_dict, "run": {"tracking_uri": uri, "run_id": run_id}, "env": env},
            scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=gpu,
                                         resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=f"train-audio-{run_id[:8]}", storage_path=job.storage))
        try:
            result = trainer.fit()
            if result.error is not None:
                raise result.error
        except Exception as exc:  # noqa: BLE001 (Ray wraps the worker's error in its own types)
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise AudioTrainError(f"training failed: {lines[-1] if lines else type(exc).__name__}") from exc
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
        c.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items() if k in METRICS or k.endswith("_s")
                                     or k in ("recon_l1", "scored_clips", "frames")])
        versions: dict[str, int] = {}
        assert result.checkpoint is not None, "the training worker reported no checkpoint"
        with result.checkpoint.as_directory() as d:
            for name, fname in ((AUDIO_LIP_MODEL, AUDIO_LIP_FILE), (SCORER_MODEL, SCORER_FILE)):
                _log_checkpoint(uri, run_id, Path(d) / fname, name)
                if job.register:
                    versions[name] = _register(uri, run_id, name, metrics,
                                               {"dataset_version": version, "git_commit": commit})
        status = "FINISHED"
        return {"run_id": run_id, "metrics": metrics, "versions": versions,
                "train_min": (time.perf_counter() - started) / 60, "tracking_uri": uri}
    finally:
        c.set_terminated(run_id, status=status)


def _metric(k: str, v: float):  # noqa: ANN202
    from mlflow.entities import Metric

    return Metric(k, v, int(time.time() * 1000), 0)


def run_cli(args: argparse.Namespace) -> int:
    job = AudioTrainJob(dataset=args.dataset, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        s3_endpoint=args.s3_endpoint, exclude=list(args.exclude), val_fraction=args.val_fraction,
                        preset=args.preset, seed=args.seed, num_workers=args.num_workers,
                        cpus_per_worker=args.cpus_per_worker, ray_address=args.address, storage=args.storage,
                        cache_dir=args.cache_dir, register=not args.no_register)
    try:
        out = run_train_audio(job)
    except (tracking.TrackingError, FileNotFoundError, ValueError, AudioTrainError) as exc:
        print(f"train-audio: {exc}", file=sys.stderr)
        return 2
    for name, v in out["versions"].items():
        print(f"registered {name} version {v}", file=sys.stderr)
    m = out["metrics"]
    print(" ".join(f"{k}={m[k]:.4g}" for k in ("swap_l1", "retrieval_top1", "offset_acc", "lse_c") if k in m)
          + f" train_min={out['train_min']:.2f} run_id={out['run_id']}")
    return 0
