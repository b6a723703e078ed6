"""``parley train --identities`` and ``parley sweep``: one Ray Tune trial per identity (x search-space point).

Each trial is a function trainable that runs :func:`jobs.train.train_identity` (head -> lips -> torso, then
the held-out evaluation) on one GPU when the cluster has GPUs, on CPUs otherwise. At every trainer
checkpoint the trial reports ``val_psnr`` (a quick held-out PSNR, what ASHA ranks by) together with the
checkpoint, so Tune persists it to the trial storage (local path or S3); a trial whose worker dies is
restarted by Tune (``FailureConfig``) from its last reported checkpoint, in the same MLflow run.

After the trials, the best trial of each identity (by the held-out ``psnr``) has its model registered as a
new version of ``avatar-<identity>`` (:mod:`jobs.registry`).

An interrupted fan-out (its driver killed) is resumed with ``--resume NAME``: the Tune experiment is restored from
its storage with the settings it started with (:data:`RECORD`), finished trials are kept, the others continue from
their last checkpoint in their own MLflow runs. On a cluster of several machines, node-local stores (a SQLite
tracking file, a local Tune storage path) are refused before anything starts (:func:`check_cluster`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from jobs import registry, tracking
from pipelines import ray_env

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_"
"""Tracking settings and credentials, handed to every trial (an MLflow server has no instance profile; they travel
as a Tune parameter, not in a runtime_env the dashboard shows)."""
REPORT_DIR = "report"
"""Trial-local directory handed to Tune at each report (a copy of the checkpoint + the run id)."""
QUICK_VAL_FRAMES = 2
"""Held-out frames rendered for ``val_psnr`` at each checkpoint."""
DEFAULT_MEMORY_PER_TRIAL_GB = 4.0
"""Host memory Ray reserves per trial (``--memory-per-trial-gb``), so a node runs no more trials than fit. A
``debug`` trial (30 frames at 64 px) peaks at 1.2 GB RSS, nearly all of it torch and the libraries; each frame
held adds its image and parsing at the training size (~0.26 MB at 256 px, ~1 MB at 512 px), so 4 GB covers about
2500 frames at 512 px. Raise it for longer identities."""
RECORD = "parley-fanout.json"
"""What a fan-out started with (job, kind, identities, tracking store and experiment, parent run), written into
its Tune experiment directory before the trials start; ``--resume`` reads it back."""
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph",
                       "beegfs", "gpfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs")
"""Mount types whose directories every node of a cluster sees (``/proc/mounts``): a Tune storage path on one is
accepted on a multi-machine cluster."""


class FanoutError(ValueError):
    """Bad input to a fan-out (unknown identity, empty dataset, bad search space)."""


@dataclass
class FanoutJob:
    """Everything a fan-out needs; plain values only (it travels to the trials as JSON)."""

    dataset: str
    identities: list[str] | None = None
    """None = every identity of the dataset."""
    preset: str = "cpu"
    steps_scale: float = 1.0
    max_frames: int | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    """MLflow experiment name (default ``parley/<dataset name>``)."""
    storage: str | None = None
    """Tune storage (local path or ``s3://``; default ``RAY_STORAGE``, else Ray's ``~/ray_results``)."""
    s3_endpoint: str | None = None
    name: str | None = None
    """Tune experiment name (default ``<train|sweep>-<dataset>-<time>``)."""
    gpus_per_trial: float = 1.0
    """GPUs per trial when the cluster has GPUs (0: always CPU)."""
    cpus_per_trial: float = 1.0
    memory_per_trial_gb: float = DEFAULT_MEMORY_PER_TRIAL_GB
    """Host memory reserved per trial (Tune's ``memory`` resource; 0 reserves none)."""
    max_concurrent: int | None = None
    max_failures: int = 2
    ray_address: str | None = None
    register: bool = True
    work_root: str | None = None
    """Node-local scratch for trials (default: the temp dir)."""
    space: dict[str, Any] = field(default_factory=dict)
    """Sweep search space (dotted config key -> spec), see :func:`search_space`."""
    num_samples: int = 1
    scheduler: dict[str, Any] = field(default_factory=dict)
    """``{"type": "asha", "grace_period": ..., "reduction_factor": ...}`` or empty (FIFO)."""
    metric: str = "val_psnr"
    mode: str = "max"


# config overrides -----------------------------------------------------------------------------------------
def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A frozen dataclass config with dotted keys replaced (``{"model.head.audio_coord_dim": 3}``).

    Raises:
        FanoutError: a key that is not a config field (the valid ones at that level are named), or a value the
            field cannot take.
    """
    for key, value in overrides.items():
        cfg = _replace_path(cfg, key.split("."), value, key)
    return cfg


def _replace_path(obj: Any, path: list[str], value: Any, full: str) -> Any:
    if not is_dataclass(obj) or isinstance(obj, type):
        raise FanoutError(f"config key {full!r}: {type(obj).__name__} has no fields")
    names = {f.name: f for f in fields(obj)}
    head = path[0]
    if head not in names:
        raise FanoutError(f"config key {full!r}: no field {head!r} (fields: {', '.join(sorted(names))})")
    current = getattr(obj, head)
    if len(path) > 1:
        return replace(obj, **{head: _replace_path(current, path[1:], value, full)})
    if is_dataclass(current):
        raise FanoutError(f"config key {full!r} names a section; set one of its fields")
    typed = isinstance(current, int | float | str) and not isinstance(current, bool)
    try:
        return replace(obj, **{head: type(current)(value) if typed else value})
    except (ValueError, TypeError) as e:  # a value of the wrong type, or one the config rejects
        raise FanoutError(f"config key {full!r}: {e}") from e


# the trial ---------------------------------------------------------------------------------------------------
def trial_main(config: dict[str, Any], job: dict[str, Any], run: dict[str, Any]) -> None:
    """The Tune function trainable: train one identity under one set of overrides.

    Args:
        config: the trial's point: ``identity`` and the search space's dotted config keys.
        job: the :class:`FanoutJob` as a dict; run: tracking settings and the forwarded environment (both
            handed over with ``tune.with_parameters``, so credentials stay out of the trials' params.json).
    """
    from ray import tune

    t_start, t_wall = time.perf_counter(), time.time()
    run_info = run  # `run` is the parameter's name in with_parameters; the body uses `trun` for the MLflow run
    os.environ.update(run_info.get("env", {}))
    fj = FanoutJob(**job)
    identity = str(config["identity"])
    overrides = {k: v for k, v in config.items() if k != "identity"}
    ctx = tune.get_context()
    key = f"{run_info['tune_name']}/{ctx.get_trial_id()}"
    work = Path(fj.work_root or Path(tempfile.gettempdir()) / "parley-trials") / run_info["tune_name"] / \
        ctx.get_trial_id()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pid").write_text(str(os.getpid()))

    from jobs.train import CHECKPOINT, EVAL_JSON, EVAL_VIDEO, QC_DIR, TrainJob, recipe, train_identity
    from nerf.trainer import config_to_json

    restored = tune.get_checkpoint()
    resumed_step = 0
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copy(Path(d) / CHECKPOINT, work / CHECKPOINT)
            resumed_step = int(json.loads((Path(d) / "state.json").read_text())["global_step"])
    else:
        (work / CHECKPOINT).unlink(missing_ok=True)  # a fresh trial never inherits a stale local file

    import torch

    device = "cuda" if run_info.get("gpu") and torch.cuda.is_available() else "cpu"
    tjob = TrainJob(dataset=fj.dataset, identity=identity, output=work, preset=fj.preset, device=device,
                    s3_endpoint=fj.s3_endpoint, steps_scale=fj.steps_scale, max_frames=fj.max_frames,
                    threads=max(1, int(fj.cpus_per_trial)))
    cfg = apply_overrides(recipe(tjob), overrides)
    cfg_json = json.loads(config_to_json(cfg))

    uri = run_info["tracking_uri"]
    tags = {tracking.IDENTITY_TAG: identity, "parley.preset": fj.preset,
            "parley.dataset_version": run_info["dataset_version"], tracking.TUNE_TAG: run_info["tune_name"],
            tracking.STORAGE_TAG: run_info["storage"]}
    if run_info.get("parent_run_id"):
        tags[tracking.PARENT_TAG] = run_info["parent_run_id"]
    name = f"{identity}" + (f"-{ctx.get_trial_id()}" if overrides else "")
    trun = tracking.TrialRun(uri, run_info["experiment_id"], key, name, tags)
    trun.start()
    trun.log_params({"config": cfg_json, "dataset": fj.dataset, "dataset_version": run_info["dataset_version"],
                    "git_commit": run_info["git_commit"], "identity": identity, "preset": fj.preset,
                    "device": device, "overrides": overrides or "none"})
    if not trun.resumed:
        trun.log_dict(cfg_json, "config.json")
    if resumed_step:
        trun.set_tags({"parley.resumed_from_step": resumed_step})
    stage_state: dict[str, Any] = {"stage": None, "t0": time.perf_counter(), "loss": None, "samples": 0, "s": 0.0}

    def close_stage(step: int) -> None:
        s = stage_state["stage"]
        if s is not None:
            trun.log_metrics({f"stage_{s}_seconds": time.perf_counter() - stage_state["t0"],
                             f"stage_{s}_final_loss": stage_state["loss"],
                             f"stage_{s}_samples_per_s": stage_state["samples"] / max(stage_state["s"], 1e-9)},
                            step, flush=True)

    def on_step(r) -> None:  # noqa: ANN001
        if r.stage != stage_state["stage"]:
            close_stage(r.global_step - 1)
            stage_state.update(stage=r.stage, t0=time.perf_counter(), samples=0, s=0.0)
        stage_state["loss"] = r.loss
        stage_state["samples"] += r.samples
        stage_state["s"] += r.seconds
        trun.log_metrics({"loss": r.loss, "lr": r.lr, "samples_per_s": r.samples / max(r.seconds, 1e-9),
                         **{f"loss_{k}": v for k, v in r.losses.items()}}, r.global_step)

    def on_checkpoint(path: Path, trainer) -> None:  # noqa: ANN001
        val = quick_val_psnr(trainer)
        rep = work / REPORT_DIR
        shutil.rmtree(rep, ignore_errors=True)
        rep.mkdir()
        shutil.copy(path, rep / CHECKPOINT)
        state = {"global_step": trainer.global_step, "stage": trainer.stage, "run_id": trun.run_id}
        (rep / "state.json").write_text(json.dumps(state))
        trun.log_metrics({"val_psnr": val}, trainer.global_step, flush=True)
        tune.report({"val_psnr": val, "global_step": trainer.global_step, "stage": trainer.stage, "finished": False,
                     "resumed_from_step": resumed_step, "run_id": trun.run_id},
                    checkpoint=tune.Checkpoint.from_directory(str(rep)))

    try:
        result = train_identity(tjob, on_step=on_step, on_checkpoint=on_checkpoint, config=cfg)
        close_stage(int(result["steps"]))
        metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
        trun.log_metrics(metrics, int(result["steps"]), flush=True)
        trun.log_artifacts([work / EVAL_JSON, work / EVAL_VIDEO], "evaluation")
        trun.log_artifacts(sorted((work / QC_DIR).glob("*.png")), "qc")
        registry.log_model(uri, trun.run_id, work / CHECKPOINT)
        trun.end("FINISHED")
    except BaseException:
        trun.end("FAILED")
        raise
    tune.report({**metrics, "val_psnr": metrics.get("psnr", float("nan")), "global_step": int(result["steps"]),
                 "stage": "done", "finished": True, "resumed_from_step": resumed_step, "run_id": trun.run_id,
                 "trial_seconds": time.perf_counter() - t_start, "train_seconds": float(result["seconds"]),
                 "trial_start_time": t_wall, "trial_end_time": time.time()})


def quick_val_psnr(trainer, n: int = QUICK_VAL_FRAMES) -> float:  # noqa: ANN001
    """PSNR of up to ``n`` held-out frames (evenly spread): the head over the ground truth's body before the
    torso stage, the full image after; NaN without held-out frames."""
    import numpy as np
    import torch

    from nerf.metrics import psnr

    val = trainer.data.val_ids
    if len(val) == 0:
        return float("nan")
    picks = val[np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)]
    head_only = not (trainer.stage == "torso" or trainer.done)
    vals = []
    for f in picks.tolist():
        gt = torch.from_numpy(trainer.data.images[f]).float() / 255.0
        vals.append(psnr(trainer.render_frame(f, head_only=head_only), gt))
    return float(np.mean(vals))


# the driver --------------------------------------------------------------------------------------------------
def search_space(space: dict[str, Any]) -> dict[str, Any]:
    """YAML search-space specs -> Tune domains.

    Each value is a constant or a one-key mapping: ``grid: [..]``, ``choice: [..]``, ``uniform: [lo, hi]``,
    ``loguniform: [lo, hi]``, ``randint: [lo, hi]``, ``quniform: [lo, hi, q]``.

    Raises:
        FanoutError: an unknown spec.
    """
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
              "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
              "quniform": lambda a: tune.quniform(*a)}
    out: dict[str, Any] = {}
    for key, spec in (space or {}).items():
        if key == "identity":
            raise FanoutError(f"search space key {key!r} is reserved")
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in makers:
                raise FanoutError(f"search space {key!r}: expected one of {', '.join(makers)} as the only key, "
                                  f"got {spec!r}")
            kind, arg = next(iter(spec.items()))
            out[key] = makers[kind](arg)
        else:
            out[key] = spec
    return out


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML (``preset``, ``metric``, ``mode``, ``num_samples``, ``scheduler``, ``space``, and any
    :class:`FanoutJob` field).

    Raises:
        FanoutError: unreadable file or unknown keys.
    """
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FanoutError(f"{path}: cannot read the sweep file: {exc}") from exc
    if not isinstance(doc, dict):
        raise FanoutError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in fields(FanoutJob)} - {"dataset"}
    bad = sorted(set(doc) - known)
    if bad:
        raise FanoutError(f"{path}: unknown keys {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return doc


def _check_inputs(job: FanoutJob) -> list[str]:
    from pipelines.dataset import Dataset
    from pipelines.storage import S3Options

    ds = Dataset(job.dataset, S3Options(endpoint_url=job.s3_endpoint))
    if not ds.storage.exists("clips") and not ds.storage.exists("frames"):
        raise FileNotFoundError(f"{job.dataset}: not a dataset (no clips/ or frames/); run `parley build-dataset`")
    known = ds.identity_names()
    if not known:
        raise FanoutError(f"{job.dataset}: the dataset has no identities with frames (did every clip fail? see "
                          "clips/ and qc/)")
    wanted = known if not job.identities or job.identities == ["all"] else list(dict.fromkeys(job.identities))
    missing = [i for i in wanted if i not in known]
    if missing:
        raise FanoutError(f"{job.dataset}: no identity {', '.join(map(repr, missing))} "
                          f"(identities: {', '.join(known)})")
    from nerf.presets import preset

    apply_overrides(preset(job.preset), {k: _example(v) for k, v in job.space.items()})
    return wanted


def _example(spec: Any) -> Any:
    """One value of a search-space spec (to validate its key before any trial starts)."""
    if isinstance(spec, dict) and len(spec) == 1:
        arg = next(iter(spec.values()))
        return arg[0] if isinstance(arg, list) and arg else arg
    return spec


def tune_storage(job: FanoutJob) -> str:
    """The Tune storage a fan-out uses: ``--storage``, else ``RAY_STORAGE``, else Ray's ``~/ray_results``."""
    return job.storage or os.environ.get("RAY_STORAGE") or str(Path("~/ray_results").expanduser())


def _storage(job: FanoutJob) -> tuple[str, Any]:
    """Tune's ``storage_path`` and ``storage_filesystem`` (None: the local one)."""
    from pipelines.storage import S3Options, _s3_filesystem, is_s3, split_s3

    where = tune_storage(job)
    if is_s3(where):
        bucket, key = split_s3(where)
        return f"{bucket}/{key}".rstrip("/"), _s3_filesystem(S3Options(endpoint_url=job.s3_endpoint))
    if "://" in where:
        raise FanoutError(f"--storage {where}: expected a local directory or s3://bucket/prefix")
    return str(Path(where).expanduser().resolve()), None


def _experiment_fs(job: FanoutJob) -> tuple[Any, str]:
    """A pyarrow filesystem and the storage root in it (where Tune puts the experiment directories)."""
    import pyarrow.fs as pafs

    root, fs = _storage(job)
    return fs or pafs.LocalFileSystem(), root


def _write_record(job: FanoutJob, record: dict[str, Any]) -> None:
    fs, root = _experiment_fs(job)
    folder = f"{root}/{record['tune_name']}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{RECORD}") as f:
        f.write(json.dumps(record, indent=1, default=str).encode())


def stored_experiments(job: FanoutJob) -> list[str]:
    """The fan-outs in a job's Tune storage (directories holding a :data:`RECORD`), sorted."""
    import pyarrow.fs as pafs

    fs, root = _experiment_fs(job)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    dirs = [i for i in found if i.type == pafs.FileType.Directory]
    records = fs.get_file_info([f"{d.path}/{RECORD}" for d in dirs]) if dirs else []
    return sorted(d.base_name for d, r in zip(dirs, records, strict=True) if r.type == pafs.FileType.File)


def read_record(job: FanoutJob, name: str) -> dict[str, Any]:
    """What the fan-out ``name`` in the job's storage started with (see :data:`RECORD`).

    Raises:
        FanoutError: no such fan-out there (the ones there are named).
    """
    import pyarrow.fs as pafs

    fs, root = _experiment_fs(job)
    path = f"{root}/{name}/{RECORD}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        there = stored_experiments(job)
        raise FanoutError(f"--resume {name}: no fan-out {name!r} in the Tune storage {tune_storage(job)} "
                          f"(fan-outs there: {', '.join(there) if there else 'none'}); pass the --storage it ran with")
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def _resumed_job(job: FanoutJob, record: dict[str, Any]) -> FanoutJob:
    """The recorded job with this invocation's placement (storage, endpoints, Ray address, scratch, registering).

    Raises:
        FanoutError: a ``--dataset`` other than the one the fan-out trained on.
    """
    from pipelines.storage import S3Options, Storage

    known = {f.name for f in fields(FanoutJob)}
    old = FanoutJob(**{k: v for k, v in record["job"].items() if k in known})
    s3 = job.s3_endpoint or old.s3_endpoint
    name = str(record["tune_name"])
    if job.dataset and Storage(job.dataset, S3Options(endpoint_url=s3)).uri != old.dataset:
        raise FanoutError(f"--resume {name}: it trained on {old.dataset}, not {job.dataset} (leave --dataset out)")
    return replace(old, name=name, storage=job.storage, s3_endpoint=s3, ray_address=job.ray_address,
                   work_root=job.work_root or old.work_root, register=job.register,
                   tracking_uri=job.tracking_uri or record["tracking_uri"])


def _network_fs(path: str, mounts: str | None = None) -> bool:
    """Whether ``path`` lies on a network filesystem (:data:`NETWORK_FILESYSTEMS`), by ``/proc/mounts``."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return False
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].rstrip("/") or "/"
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind in NETWORK_FILESYSTEMS


def check_cluster(nodes: list[dict[str, Any]], job: FanoutJob, tracking_uri: str, mounts: str | None = None) -> None:
    """Refuse node-local stores on a cluster of several machines, and trials no machine has the memory for.

    Trials run wherever Ray puts them. When that can be another machine than the driver's (the alive nodes have
    more than one address, or none of them fits a trial, so they start on nodes the autoscaler adds), a SQLite or
    file tracking store and a local Tune storage directory (Ray's default ``~/ray_results`` included) would be a
    different file on each machine: runs and checkpoints scatter and go with their nodes. A Tune storage path on a
    network filesystem every node mounts (:data:`NETWORK_FILESYSTEMS`) is accepted.

    Args:
        nodes: ``ray.nodes()``.
        job: the fan-out.
        tracking_uri: the resolved tracking URI.
        mounts: ``/proc/mounts`` text (read when None).

    Raises:
        FanoutError: one message naming each node-local store and what to pass instead; or, on one machine,
            more memory per trial than it offers.
    """
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    machines = {n.get("NodeManagerAddress") for n in alive}
    fits = [n for n in alive if float(n.get("Resources", {}).get("CPU", 0)) >= job.cpus_per_trial]
    memory = job.memory_per_trial_gb * 2**30
    if len(machines) <= 1 and fits:
        offered = max(float(n.get("Resources", {}).get("memory", 0)) for n in fits)
        if memory > offered:
            raise FanoutError(f"--memory-per-trial-gb {job.memory_per_trial_gb:g}: this machine offers Ray "
                              f"{offered / 2**30:.1f} GB, so no trial could start; pass a smaller value")
        return
    why = (f"this Ray cluster spans {len(machines)} machines" if len(machines) > 1 else
           "no node of this Ray cluster fits a trial yet (they will run on nodes the autoscaler adds)")
    problems, fixes = [], []
    path = tracking.local_store_path(tracking_uri)
    if path is not None:
        problems.append(f"the tracking store {tracking_uri} is a file on one machine")
        fixes.append("--tracking-uri http://MLFLOW_HOST:5000 (an `mlflow server` every node reaches)")
    where = tune_storage(job)
    if "://" not in where and not _network_fs(str(Path(where).expanduser().resolve()), mounts):
        problems.append(f"the Tune storage {where}{'' if job.storage else ' (the default)'} is a directory on one "
                        "machine")
        fixes.append("--storage s3://BUCKET/tune (or a directory on a network filesystem every node mounts)")
    if problems:
        raise FanoutError(f"{why}, but {' and '.join(problems)}: trials on other machines would write elsewhere "
                          f"and their runs and checkpoints go with their nodes; pass {' and '.join(fixes)}")


def run_fanout(job: FanoutJob, kind: str = "train", resume: bool = False) -> dict[str, Any]:
    """Train every wanted identity (x search-space point) on Ray Tune, track in MLflow, register the best.

    Inputs, the tracking store and the cluster (:func:`check_cluster`) are checked before any trial runs.

    Args:
        job: the fan-out.
        kind: ``train`` or ``sweep`` (a sweep's trials nest under a parent run).
        resume: restore the interrupted fan-out ``job.name`` from ``job``'s Tune storage instead of starting one:
            its recorded settings (:data:`RECORD`) are used, with this job's storage, endpoints, Ray address,
            scratch directory, ``register`` and (when given) tracking URI; finished trials are not re-run, the
            others continue from their last checkpoint in their own MLflow runs.

    Returns:
        ``experiment`` (Tune path), ``tracking_uri``, ``mlflow_experiment_id``, ``trials`` (identity, status,
        metrics, run id per trial), ``registered`` (model name -> version), ``unfinished_jobs`` (other Tune
        experiments with runs still RUNNING in the MLflow experiment, see :func:`tracking.unfinished_jobs`; empty
        on resume), ``seconds``, ``timings`` (``setup_s``: inputs and tracking checked, Ray started; ``fit_s``: Tune
        ran the trials; ``register_s``: registry; ``fit_start_time``/``fit_end_time``: the epoch seconds around
        ``Tuner.fit``, to compare with the trials' ``trial_start_time``/``trial_end_time`` metrics).

    Raises:
        FanoutError, FileNotFoundError: bad input, node-local stores on a multi-machine cluster, nothing to
            resume; tracking.TrackingError: the tracking store is unreachable or would be lost with a Ray job's
            temporary directory.
    """
    t0 = time.perf_counter()
    from pipelines.storage import S3Options, Storage

    record: dict[str, Any] | None = None
    if resume:
        if not job.name:
            raise FanoutError("resume: name the Tune experiment to resume (--resume NAME)")
        record = read_record(job, job.name)
        job, kind = _resumed_job(job, record), str(record["kind"])
    # trials run in other directories (and on other nodes): a local dataset path must be absolute
    job = replace(job, dataset=Storage(job.dataset, S3Options(endpoint_url=job.s3_endpoint)).uri)
    identities = _check_inputs(job)
    if record is not None:
        identities = [str(i) for i in record["identities"]]  # Tune restores the param space it started with
    uri = tracking.resolve_tracking_uri(job.tracking_uri)
    tracking.check_store_location(uri, defaulted=tracking.is_default_store(job.tracking_uri))
    tracking.check_tracking(uri)
    storage_path, storage_fs = _storage(job)

    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init(address=job.ray_address)
    check_cluster(ray.nodes(), job, uri)
    exp_id = tracking.experiment_id(uri, job.dataset, job.experiment)
    unfinished: dict[str, dict[str, Any]] = {}
    if record is not None:
        name, version, commit = str(record["tune_name"]), str(record["dataset_version"]), str(record["git_commit"])
        parent = record.get("parent_run_id")
        if parent:
            tracking.reopen_run(uri, parent)
    else:
        version = tracking.dataset_version(job.dataset, job.s3_endpoint)
        commit = tracking.git_commit()
        name = job.name or f"{kind}-{tracking.dataset_name(job.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"
        unfinished = tracking.unfinished_jobs(uri, exp_id, exclude=name)
        if unfinished:
            print(unfinished_note(unfinished, job.experiment or f"parley/{tracking.dataset_name(job.dataset)}"),
                  file=sys.stderr)
        parent = None
        if kind == "sweep":
            parent = tracking.start_parent_run(uri, exp_id, name, {"space": job.space, "identities": identities,
                                                                   "preset": job.preset, "scheduler": job.scheduler,
                                                                   "dataset_version": version, "git_commit": commit},
                                               tags={tracking.STORAGE_TAG: tune_storage(job)})

    gpu = job.gpus_per_trial > 0 and float(ray.cluster_resources().get("GPU", 0)) > 0
    resources = {"cpu": job.cpus_per_trial, **({"gpu": job.gpus_per_trial} if gpu else {}),
                 **({"memory": int(job.memory_per_trial_gb * 2**30)} if job.memory_per_trial_gb > 0 else {})}
    env = {**ray_env.forwarded_env(("PARLEY_", "AWS_")),  # AWS keys only to trials on this machine
           **{k: v for k, v in os.environ.items() if k.startswith(TRACKING_ENV)}}
    if env.get("PARLEY_ASSETS"):  # trials run in other directories
        env["PARLEY_ASSETS"] = str(Path(env["PARLEY_ASSETS"]).expanduser().resolve())
    run_info = {"tune_name": name, "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent,
                "dataset_version": version, "storage": tune_storage(job),
                "git_commit": commit, "gpu": gpu, "env": env}
    param_space = {"identity": tune.grid_search(identities), **search_space(job.space)}
    scheduler = None
    if job.scheduler.get("type", "fifo") == "asha":
        from jobs.schedulers import asha_per_identity

        sc = job.scheduler  # trials compete within their identity only (PSNRs of two people do not compare)
        scheduler = asha_per_identity(max_t=int(sc.get("max_t", 10_000)), grace_period=int(sc.get("grace_period", 2)),
                                      reduction_factor=float(sc.get("reduction_factor", 2)))
    elif job.scheduler.get("type", "fifo") != "fifo":
        raise FanoutError(f"scheduler {job.scheduler.get('type')!r}: expected asha or fifo")
    trainable = tune.with_resources(tune.with_parameters(trial_main, job=asdict(job), run=run_info), resources)
    if record is not None:
        path = f"{storage_path}/{name}"
        if not tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
            raise FanoutError(f"--resume {name}: {tune_storage(job)}/{name} holds no Tune state (the driver stopped "
                              "before any trial started); start it again without --resume")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space, storage_filesystem=storage_fs)
    else:
        _write_record(job, {"kind": kind, "tune_name": name, "job": asdict(job), "identities": identities,
                            "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent,
                            "dataset_version": version, "git_commit": commit})
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=job.metric, mode=job.mode, scheduler=scheduler,
                                        num_samples=job.num_samples, max_concurrent_trials=job.max_concurrent,
                                        # a finished trial's worker (torch imported, caches warm) runs the next one
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                      failure_config=tune.FailureConfig(max_failures=job.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1),
        )
    log.info("%s%s: %d identit%s on %s per trial -> tracking %s", "resuming " if record else "", name,
             len(identities), "y" if len(identities) == 1 else "ies", resources, uri)
    t_fit, wall_fit = time.perf_counter(), time.time()
    results = tuner.fit()
    t_register, wall_fit_end = time.perf_counter(), time.time()

    trials: list[dict[str, Any]] = []
    for k in range(len(results)):
        res = results[k]
        m = dict(res.metrics or {})
        cfg = res.config or {}
        ident = str(cfg.get("identity"))
        # `finished` is the trial's own flag: Tune's auto-filled `done` is also True for a trial a scheduler stopped
        status = "done" if m.get("finished") else ("error" if res.error else "stopped")
        run_id = m.get("run_id")
        if run_id and status != "done":  # stopped by the scheduler or failed for good: close its run
            tracking.end_run(uri, run_id, "KILLED" if status == "stopped" else "FAILED")
        trials.append({"identity": ident, "status": status, "run_id": run_id, "path": res.path,
                       "overrides": {k: v for k, v in cfg.items() if k != "identity"},
                       "metrics": {k: m[k] for k in (*registry.METRICS, "val_psnr", "global_step",
                                                     "resumed_from_step", "trial_seconds", "train_seconds",
                                                     "trial_start_time", "trial_end_time") if k in m},
                       "error": str(res.error).splitlines()[0] if res.error else None})
    registered = {}
    if job.register:
        for ident in identities:
            done = [t for t in trials if t["identity"] == ident and t["status"] == "done" and t["run_id"]]
            if not done:
                continue
            best = max(done, key=lambda t: t["metrics"].get("psnr", float("-inf")))
            v = _registered_version(uri, ident, best["run_id"]) or registry.register(
                uri, best["run_id"], ident, best["metrics"],
                tags={"dataset_version": version, "git_commit": commit, "preset": job.preset, "dataset": job.dataset})
            registered[registry.model_name(ident)] = v
    if parent:
        c = tracking.client(uri)
        for ident in identities:
            vals = [t["metrics"]["psnr"] for t in trials
                    if t["identity"] == ident and t["status"] == "done" and "psnr" in t["metrics"]]
            if vals:
                c.log_metric(parent, f"best_psnr_{ident}", float(max(vals)))
        tracking.end_run(uri, parent, "FINISHED")
    t_end = time.perf_counter()
    return {"experiment": results.experiment_path, "tracking_uri": uri, "mlflow_experiment_id": exp_id,
            "parent_run_id": parent, "trials": trials, "registered": registered, "unfinished_jobs": unfinished,
            "seconds": t_end - t0,
            "timings": {"setup_s": t_fit - t0, "fit_s": t_register - t_fit, "register_s": t_end - t_register,
                        "fit_start_time": wall_fit, "fit_end_time": wall_fit_end}}


def _registered_version(uri: str, identity: str, run_id: str) -> int | None:
    """The version a run is already registered as (a resumed fan-out whose first driver got that far), else None."""
    try:
        return next((v.version for v in registry.versions(uri, registry.model_name(identity)) if v.run_id == run_id),
                    None)
    except registry.RegistryError:  # no such model yet
        return None


def unfinished_note(unfinished: dict[str, dict[str, Any]], experiment: str) -> str:
    """One line naming the Tune experiments with runs still RUNNING and the command that resumes each."""
    cmds = "; ".join(f"parley {j['kind']} --resume {n}" + (f" --storage {j['storage']}" if j["storage"] else "")
                     for n, j in sorted(unfinished.items()))
    what = ", ".join(f"{n} ({j['runs']} run{'s' if j['runs'] != 1 else ''})" for n, j in sorted(unfinished.items()))
    return (f"note: MLflow experiment {experiment} holds runs still marked RUNNING from {what}; if that driver "
            f"stopped, resume it (finished trials are kept, the others continue in their runs): {cmds}")


# CLI ---------------------------------------------------------------------------------------------------------
def job_from_args(args, sweep: dict[str, Any] | None = None) -> FanoutJob:  # noqa: ANN001
    """The :class:`FanoutJob` of ``parley train`` / ``sweep`` arguments (and a sweep file's keys).

    Raises:
        FanoutError: ``--resume`` with a different ``--name``.
    """
    doc = dict(sweep or {})
    ids = [s for s in str(args.identities).split(",") if s]
    if getattr(args, "identity", None):
        ids = [args.identity]
    resume = getattr(args, "resume", None)
    if resume and args.name and args.name != resume:
        raise FanoutError(f"--resume {resume} --name {args.name}: the name of a resumed fan-out is its own; "
                          "leave --name out")
    job = FanoutJob(dataset=args.dataset or "", identities=None if ids == ["all"] else ids,
                    gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                    max_concurrent=args.max_concurrent, max_failures=args.max_failures, storage=args.storage,
                    tracking_uri=args.tracking_uri, experiment=args.experiment, name=resume or args.name,
                    register=not args.no_register, ray_address=args.address, s3_endpoint=args.s3_endpoint,
                    work_root=args.work_root)
    job = replace(job, **{k: v for k, v in doc.items() if k != "identities" or not ids or ids == ["all"]})
    for attr in ("preset", "steps_scale", "max_frames", "memory_per_trial_gb"):
        if getattr(args, attr) is not None:
            job = replace(job, **{attr: getattr(args, attr)})
    return job


def print_summary(out: dict[str, Any]) -> None:
    print(f"{len(out['trials'])} trial(s) in {out['seconds']:.0f} s -> {out['experiment']}")
    for t in sorted(out["trials"], key=lambda t: (t["identity"], -t["metrics"].get("psnr", -1e9))):
        m = t["metrics"]
        what = " ".join(f"{k}={v}" for k, v in t["overrides"].items())
        line = (f"  {t['identity']:<24} {t['status']:<7} psnr={m.get('psnr', float('nan')):.2f} "
                f"lpips={m.get('lpips', float('nan')):.3f} run={t['run_id']} {what}")
        print(line + (f"  ({t['error']})" if t["error"] else ""))
    for name, v in out["registered"].items():
        print(f"registered {name} version {v}")
    uri = out["tracking_uri"]
    ui = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    print(f"tracking: {uri} (experiment {out['mlflow_experiment_id']}); UI: {ui}")
    if out["registered"]:
        print(f"next: parley registry promote --tracking-uri {uri}")


def _fail(cmd: str, exc: BaseException) -> int:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    print(f"{cmd}: {msg}", file=sys.stderr)
    return 2


def run_train_cli(args) -> int:  # noqa: ANN001
    try:
        out = run_fanout(job_from_args(args), "train", resume=bool(args.resume))
    except (FanoutError, FileNotFoundError, KeyError, tracking.TrackingError) as exc:
        return _fail("train", exc)
    print_summary(out)
    return 0 if all(t["status"] == "done" for t in out["trials"]) else 1


def run_sweep_cli(args) -> int:  # noqa: ANN001
    try:
        doc = load_sweep(args.space) if args.space else {}
        out = run_fanout(job_from_args(args, doc), "sweep", resume=bool(args.resume))
    except (FanoutError, FileNotFoundError, KeyError, tracking.TrackingError) as exc:
        return _fail("sweep", exc)
    print_summary(out)
    return 0 if any(t["status"] == "done" for t in out["trials"]) else 1
