"""``parley train --identities`` and ``parley sweep``: one Ray Tune trial per identity (x search-space point).

Each trial is a function trainable (:mod:`jobs.trial`) that runs :func:`jobs.train.train_identity` (the method's
stages, then the held-out evaluation) on one GPU when the cluster has GPUs, on CPUs otherwise. At every trainer
checkpoint the trial reports ``val_psnr`` (a quick held-out PSNR, what ASHA ranks by) together with the
checkpoint, so Tune persists it to the trial storage (local path or S3); a trial whose worker dies is
restarted by Tune (``FailureConfig``) from its last reported checkpoint, in the same MLflow run.

After the trials, the best trial of each identity (by the held-out ``psnr``) has its model registered as a
new version of ``avatar-<identity>`` (RAD-NeRF; ``<method>-<identity>`` for the other methods, :mod:`jobs.registry`).

An interrupted fan-out (its driver killed) is resumed with ``--resume NAME``: the Tune experiment is restored from
its storage with the settings it started with (:data:`jobs.fanout_storage.RECORD`), finished trials are kept, the
others continue from their last checkpoint in their own MLflow runs. On a cluster of several machines, node-local
stores (a SQLite tracking file, a local Tune storage path) are refused before anything starts
(:func:`check_cluster`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from jobs import registry, tracking
from jobs.errors import fail
from jobs.fanout_config import (
    FanoutError,
    FanoutJob,
    apply_overrides,
    example_value,
    job_from_args,
    load_sweep,
    search_space,
)
from jobs.fanout_storage import (
    network_fs,
    read_record,
    resumed_job,
    storage_location,
    tune_storage,
    write_record,
)
from jobs.trial import trial_main
from pipelines import ray_env

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_"
"""Tracking settings and credentials, handed to every trial (an MLflow server has no instance profile; they travel
as a Tune parameter, not in a runtime_env the dashboard shows)."""

def _check_inputs(job: FanoutJob) -> list[str]:
    from pipelines.dataset import Dataset
    from pipelines.storage import S3Options

    ds = Dataset(job.dataset, S3Options(endpoint_url=job.s3_endpoint)).require()
    known = ds.identity_names()
    if not known:
        raise FanoutError(f"{job.dataset}: the dataset has no identities with frames (did every clip fail? see "
                          "clips/ and qc/)")
    from nerf import methods

    every = not job.identities or job.identities == ["all"]
    if methods.get(job.method).model.several_people:  # a trial per conversation (or per set of identities)
        wanted = _check_subjects(ds, job, every)
    else:
        wanted = known if every else list(dict.fromkeys(job.identities or []))
        missing = [i for i in wanted if i not in known]
        if missing:
            raise FanoutError(f"{job.dataset}: no identity {', '.join(map(repr, missing))} "
                              f"(identities: {', '.join(known)})")

    apply_overrides(methods.preset(job.preset, job.method), {k: example_value(v) for k, v in job.space.items()})
    return wanted


def _check_subjects(ds: Any, job: FanoutJob, every: bool) -> list[str]:
    """The subjects of a method of several people: every conversation of the dataset, or those given (a conversation
    id, or identities joined by ``+``), each checked (:func:`jobs.dialogue_data.resolve_people`)."""
    from jobs.dialogue_data import resolve_people
    from pipelines.conversations import list_conversations

    wanted = [c.conversation_id for c in list_conversations(ds)] if every else list(dict.fromkeys(job.identities or []))
    if not wanted:
        raise FanoutError(f"{job.dataset}: no conversations (clips of two people) to train a {job.method} model on; "
                          "name identities to train together with --identities A+B")
    for subject in wanted:
        try:
            resolve_people(ds, subject)
        except (KeyError, ValueError) as exc:
            raise FanoutError(str(exc.args[0] if exc.args else exc)) from None
    return wanted


def check_cluster(nodes: list[dict[str, Any]], job: FanoutJob, tracking_uri: str, mounts: str | None = None) -> None:
    """Refuse node-local stores on a cluster of several machines, and trials no machine has the memory for.

    Trials run wherever Ray puts them. When that can be another machine than the driver's (the alive nodes have
    more than one address, or none of them fits a trial, so they start on nodes the autoscaler adds), a SQLite or
    file tracking store and a local Tune storage directory (Ray's default ``~/ray_results`` included) would be a
    different file on each machine: runs and checkpoints scatter and go with their nodes. A Tune storage path on a
    network filesystem every node mounts (:data:`jobs.fanout_storage.NETWORK_FILESYSTEMS`) is accepted.

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
    if "://" not in where and not network_fs(str(Path(where).expanduser().resolve()), mounts):
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
        resume: restore the interrupted fan-out ``job.name`` from ``job``'s Tune storage instead of starting one: its
            recorded settings (:data:`jobs.fanout_storage.RECORD`) are used, with this job's storage, endpoints, Ray
            address, scratch directory, ``register`` and (when given) tracking URI; finished trials are not re-run,
            the others continue from their last checkpoint in their own MLflow runs.

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
        job, kind = resumed_job(job, record), str(record["kind"])
    # trials run in other directories (and on other nodes): a local dataset path must be absolute
    job = replace(job, dataset=Storage(job.dataset, S3Options(endpoint_url=job.s3_endpoint)).uri)
    identities = _check_inputs(job)
    if record is not None:
        identities = [str(i) for i in record["identities"]]  # Tune restores the param space it started with
    uri = tracking.resolve_tracking_uri(job.tracking_uri)
    tracking.check_store_location(uri, defaulted=tracking.is_default_store(job.tracking_uri))
    tracking.check_tracking(uri)
    if job.audio_source:  # a missing audio-lip version fails here, not in every trial
        try:
            registry.resolve(uri, job.audio_source)
        except (registry.RegistryError, ValueError) as exc:
            raise FanoutError(f"--audio-source: {exc}") from None
    storage_path, storage_fs = storage_location(job)

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
                                                                   "method": job.method, "preset": job.preset,
                                                                   "scheduler": job.scheduler,
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
        write_record(job, {"kind": kind, "tune_name": name, "job": asdict(job), "identities": identities,
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
            v = _registered_version(uri, ident, best["run_id"], job.method) or registry.register(
                uri, best["run_id"], ident, best["metrics"], method=job.method,
                tags={"dataset_version": version, "git_commit": commit, "preset": job.preset or "default",
                      "dataset": job.dataset})
            registered[registry.model_name(ident, job.method)] = v
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


def _registered_version(uri: str, identity: str, run_id: str, method: str) -> int | None:
    """The version a run is already registered as (a resumed fan-out whose first driver got that far), else None."""
    try:
        return next((v.version for v in registry.versions(uri, registry.model_name(identity, method))
                     if v.run_id == run_id), None)
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


def run_train_cli(args) -> int:  # noqa: ANN001
    try:
        out = run_fanout(job_from_args(args), "train", resume=bool(args.resume))
    except (FanoutError, FileNotFoundError, KeyError, tracking.TrackingError) as exc:
        return fail("train", exc)
    print_summary(out)
    return 0 if all(t["status"] == "done" for t in out["trials"]) else 1


def run_sweep_cli(args) -> int:  # noqa: ANN001
    try:
        doc = load_sweep(args.space) if args.space else {}
        out = run_fanout(job_from_args(args, doc), "sweep", resume=bool(args.resume))
    except (FanoutError, FileNotFoundError, KeyError, tracking.TrackingError) as exc:
        return fail("sweep", exc)
    print_summary(out)
    return 0 if any(t["status"] == "done" for t in out["trials"]) else 1
