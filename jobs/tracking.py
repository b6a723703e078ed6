"""MLflow tracking of training runs (the only module, with :mod:`jobs.registry`, that talks to MLflow).

* Where: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the current
  directory (embedded, no server). An ``http(s)://`` server is probed before any compute is spent.
* What: one experiment per dataset (``parley/<dataset name>``); one run per trial (a sweep's trials under a
  parent run); params = the flattened JSON config, the dataset version and the git commit; metrics per step
  (losses, learning rate, samples/s), per stage and the held-out evaluation; artifacts = evaluation JSON,
  side-by-side video, QC images and the model (the pyfunc wrapping the checkpoint, :mod:`jobs.registry`).
* Resumes: a trial is tagged with a key that survives its restarts (:data:`TRIAL_TAG`); a restarted trial
  finds its run by that tag and carries on in it, so a worker dying mid-training never makes a second run, and
  neither does ``parley train --resume`` (the Tune experiment restored, its trials keep their ids).
* Durable stores only: a SQLite store that a ``ray job submit`` driver would write into Ray's temporary
  directories is refused (:func:`check_store_location`).

Every call goes through an explicit :class:`mlflow.tracking.MlflowClient` (no global active run), so trials
in threads or actors do not share state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TRIAL_TAG = "parley.trial_key"
"""Tag holding a trial's restart-proof key (Tune experiment / trial id)."""
IDENTITY_TAG = "parley.identity"
KIND_TAG = "parley.kind"
"""``trial`` or ``sweep`` (the parent run)."""
PARENT_TAG = "mlflow.parentRunId"
TUNE_TAG = "parley.tune_name"
"""The Tune experiment (``--name``) a trial run or sweep parent belongs to."""
STORAGE_TAG = "parley.tune_storage"
"""Where that Tune experiment lives (``--storage``), for the ``--resume`` hint."""
DEFAULT_DB = "mlflow.db"
PARAM_LIMIT = 6000
"""MLflow's longest param value (longer values are cut, the full config is also an artifact)."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI)."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    A relative SQLite or file path is made absolute here (trials run in other working directories).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    elif "://" not in uri:
        uri = f"sqlite:///{Path(uri).resolve()}" if uri.endswith(".db") else uri
    return uri


def is_default_store(uri: str | None) -> bool:
    """Whether :func:`resolve_tracking_uri` would fall back to the SQLite file in the current directory."""
    return not uri and not os.environ.get("MLFLOW_TRACKING_URI")


def local_store_path(uri: str) -> Path | None:
    """The file or directory of a SQLite / file store (absolute), None for a server or a database service."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve()
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//")).resolve()
    if "://" not in uri:
        return Path(uri).resolve()
    return None


_SESSION_DIR = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+$")


def in_ray_temp_dir(path: str | Path) -> bool:
    """Whether ``path`` lies in a Ray session directory (``<temp>/session_<date>_<pid>/...``, where
    ``ray job submit --working-dir`` unpacks the job's files under ``runtime_resources/``)."""
    parts = Path(path).parts
    return "runtime_resources" in parts or any(_SESSION_DIR.match(p) for p in parts)


def ray_job_submission(environ: dict[str, str] | None = None) -> str | None:
    """The submission id when this process is a ``ray job submit`` driver (or runs inside a Ray worker), else None.

    Ray 2.60 hands a submitted driver its job config as JSON in ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (metadata
    ``job_submission_id``); ``RAY_JOB_SUBMISSION_ID`` and ``RAY_JOB_ID`` are read too (the latter is set in Ray's
    worker processes).
    """
    env = os.environ if environ is None else environ
    raw = env.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            meta = json.loads(raw).get("metadata") or {}
        except (ValueError, AttributeError):
            meta = {}
        return str(meta.get("job_submission_id") or "ray job")
    return env.get("RAY_JOB_SUBMISSION_ID") or env.get("RAY_JOB_ID") or None


def check_store_location(uri: str, defaulted: bool, environ: dict[str, str] | None = None) -> None:
    """Refuse a SQLite / file tracking store that would be lost with a Ray job's temporary directory.

    Under ``ray job submit`` the driver's working directory is the job's unpacked ``--working-dir`` in Ray's
    session directory, removed once no job uses it: the default ``sqlite:///<cwd>/mlflow.db`` would go with it.

    Args:
        uri: the resolved tracking URI.
        defaulted: no ``--tracking-uri`` and no ``MLFLOW_TRACKING_URI`` (see :func:`is_default_store`).
        environ: the environment to read (default ``os.environ``).

    Raises:
        TrackingError: the store is a file in Ray's temporary directories, or the default store under
            ``ray job submit``; the message says what to pass.
    """
    path = local_store_path(uri)
    if path is None:
        return
    fix = ("pass --tracking-uri http://MLFLOW_HOST:5000 (an `mlflow server` the cluster reaches; "
           "`ray job submit ... -- parley train ... --tracking-uri ...`), or, on a one-machine cluster, an absolute "
           "sqlite:////path/to/mlflow.db outside Ray's directories")
    if in_ray_temp_dir(path):
        raise TrackingError(f"tracking store {uri} lies in Ray's temporary session directory, which Ray deletes "
                            f"when the job's files are cleaned up: {fix}")
    submission = ray_job_submission(environ)
    if defaulted and submission:
        raise TrackingError(f"{submission}: no tracking store given, and the default ({uri}) is a file in the "
                            f"driver's working directory on the head, which `ray job submit` does not keep: {fix}")


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when the tracking store cannot be reached.

    ``http(s)`` servers must answer ``/health`` within ``timeout`` seconds (MLflow's client would otherwise
    retry for minutes); a SQLite store's directory must exist or be creatable.

    Raises:
        TrackingError: with the URI and what to do.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status == 200:
                    return
                reason = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                            "(`mlflow server --host 127.0.0.1 --port 5000`) or pass --tracking-uri / set "
                            "MLFLOW_TRACKING_URI to one that runs, or leave both unset for the local SQLite store")
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking store {uri}: cannot create {path.parent}: {exc}") from exc


def client(uri: str):  # noqa: ANN201
    """An MlflowClient for tracking and registry at ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: next to a SQLite store (``mlartifacts/``), else the server's
    default (None). MLflow would otherwise put them under the *current* directory of whoever creates it."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def dataset_name(dataset: str) -> str:
    """A dataset root's last path component (``s3://b/builds/hdtf`` -> ``hdtf``)."""
    return str(dataset).rstrip("/").rsplit("/", 1)[-1] or str(dataset)


def experiment_id(uri: str, dataset: str, name: str | None = None) -> str:
    """The experiment of a dataset (``parley/<dataset name>``, or ``name``), created when missing."""
    c = client(uri)
    name = name or f"parley/{dataset_name(dataset)}"
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root(uri)
    try:
        return c.create_experiment(name, artifact_location=f"{root}/{name.replace('/', '_')}" if root else None,
                                   tags={"parley.dataset": str(dataset)})
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def dataset_version(dataset: str, s3_endpoint: str | None = None) -> str:
    """A short content hash of a dataset's ``clips/`` table (clip ids, status, builder version, frames).

    Two builds of the same clips with the same builder give the same version; adding a clip changes it.
    """
    from pipelines.dataset import Dataset
    from pipelines.storage import S3Options

    rows = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).clip_rows(
        ["status", "builder_version", "n_frames"])
    key = json.dumps(sorted((k, r.get("status"), r.get("builder_version"), r.get("n_frames"))
                            for k, r in rows.items()), default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def git_commit() -> str:
    """The source's git commit (``PARLEY_GIT_COMMIT`` when set, e.g. on cluster images), else ``unknown``."""
    if os.environ.get("PARLEY_GIT_COMMIT"):
        return os.environ["PARLEY_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10)
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def start_parent_run(uri: str, exp_id: str, name: str, params: dict[str, Any],
                     tags: dict[str, str] | None = None) -> str:
    """A sweep's parent run (its trials are nested under it, ``tags`` added to it); returns the run id."""
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(exp_id, run_name=name, tags={KIND_TAG: "sweep", TUNE_TAG: name, **(tags or {})})
    items = [Param(k, param_value(v)) for k, v in flatten(params).items()]
    for k in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[k:k + 100])
    return run.info.run_id


def param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return s[:PARAM_LIMIT]


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ended (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    client(uri).set_terminated(run_id, status=status)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark an ended run RUNNING again (a resumed sweep's parent run)."""
    client(uri).update_run(run_id, status="RUNNING")


def unfinished_jobs(uri: str, exp_id: str, exclude: str | None = None) -> dict[str, dict[str, Any]]:
    """Tune experiments that hold runs still marked RUNNING in an MLflow experiment (an interrupted driver's).

    Args:
        uri: tracking URI.
        exp_id: the MLflow experiment.
        exclude: a Tune experiment name to leave out (the one starting now).

    Returns:
        Tune experiment name -> ``kind`` (``train`` or ``sweep``), ``storage`` (its ``--storage``, when its runs
        recorded it) and ``runs`` (how many are still RUNNING).
    """
    runs = client(uri).search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        tags = r.data.tags
        if tags.get(KIND_TAG) == "sweep":
            name, kind = tags.get(TUNE_TAG) or r.info.run_name, "sweep"
        elif TRIAL_TAG in tags:
            name = tags.get(TUNE_TAG) or tags[TRIAL_TAG].rsplit("/", 1)[0]
            kind = "sweep" if PARENT_TAG in tags else "train"
        else:
            continue
        if not name or name == exclude:
            continue
        job = out.setdefault(name, {"kind": kind, "storage": None, "runs": 0})
        job["runs"] += 1
        job["kind"] = "sweep" if "sweep" in (kind, job["kind"]) else "train"
        job["storage"] = job["storage"] or tags.get(STORAGE_TAG)
    return out
