"""MLflow tracking of training runs (the only module, with :mod:`jobs.registry`, that talks to MLflow).

* Where: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the current
  directory (embedded, no server). An ``http(s)://`` server is probed before any compute is spent.
* What: one experiment per dataset (``parley/<dataset name>``); one run per trial (a sweep's trials under a
  parent run); params = the flattened JSON config, the dataset version and the git commit; metrics per step
  (losses, learning rate, samples/s), per stage and the held-out evaluation; artifacts = evaluation JSON,
  side-by-side video, QC images and the model (the pyfunc wrapping the checkpoint, :mod:`jobs.registry`).
* Resumes: a trial is tagged with a key that survives its restarts (:data:`TRIAL_TAG`); a restarted trial
  finds its run by that tag and carries on in it, so a worker dying mid-training never makes a second run.

Every call goes through an explicit :class:`mlflow.tracking.MlflowClient` (no global active run), so trials
in threads or actors do not share state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRIAL_TAG = "parley.trial_key"
"""Tag holding a trial's restart-proof key (Tune experiment / trial id)."""
IDENTITY_TAG = "parley.identity"
KIND_TAG = "parley.kind"
"""``trial`` or ``sweep`` (the parent run)."""
PARENT_TAG = "mlflow.parentRunId"
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


def start_parent_run(uri: str, exp_id: str, name: str, params: dict[str, Any]) -> str:
    """A sweep's parent run (its trials are nested under it); returns the run id."""
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(exp_id, run_name=name, tags={KIND_TAG: "sweep"})
    items = [Param(k, _param(v)) for k, v in flatten(params).items()]
    for k in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[k:k + 100])
    return run.info.run_id


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return s[:PARAM_LIMIT]


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ended (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    client(uri).set_terminated(run_id, status=status)


def find_trial_run(uri: str, exp_id: str, key: str) -> str | None:
    """The run of a trial key, if one exists (the oldest, should there be several)."""
    runs = client(uri).search_runs([exp_id], filter_string=f"tags.`{TRIAL_TAG}` = '{key}'",
                                   order_by=["attributes.start_time ASC"], max_results=5)
    return runs[0].info.run_id if runs else None


@dataclass
class TrialRun:
    """The MLflow run of one training trial: params, buffered metrics, artifacts.

    Args:
        uri: tracking URI.
        exp_id: experiment id.
        key: restart-proof trial key (see :data:`TRIAL_TAG`).
        name: run name.
        tags: extra tags (identity, parent run id, ...).
    """

    uri: str
    exp_id: str
    key: str
    name: str
    tags: dict[str, str]
    run_id: str = ""
    resumed: bool = False
    flush_every_s: float = 5.0

    def __post_init__(self) -> None:
        self._client = client(self.uri)
        self._metrics: list[Any] = []
        self._last_flush = time.monotonic()
        self._through: dict[str, int] = {}

    def start(self) -> str:
        """Create the run, or find this trial's earlier run and reopen it; returns the run id."""
        existing = find_trial_run(self.uri, self.exp_id, self.key)
        if existing:
            self.run_id, self.resumed = existing, True
            self._client.update_run(existing, status="RUNNING")
        else:
            run = self._client.create_run(self.exp_id, run_name=self.name,
                                          tags={TRIAL_TAG: self.key, KIND_TAG: "trial", **self.tags})
            self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (flattened); a resumed run keeps the values it has (MLflow params are immutable)."""
        from mlflow.entities import Param

        have = self._client.get_run(self.run_id).data.params if self.resumed else {}
        items = [Param(k, _param(v)) for k, v in flatten(params).items() if k not in have]
        for k in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[k:k + 100])

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics at a step (non-finite values dropped); sent every few seconds or on ``flush``.

        In a resumed run, a metric at a step the run already holds is not sent again: a trial restored from its
        checkpoint re-trains the steps after it, and with the checkpoint's random state, to the same values.
        """
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                          if v is not None and math.isfinite(float(v)) and step > self._logged_through(k)]
        if flush or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def _logged_through(self, key: str) -> int:
        """The highest step of ``key`` the run held when it was reopened (-1 for a new run); one query per key."""
        if not self.resumed:
            return -1
        if key not in self._through:
            hist = self._client.get_metric_history(self.run_id, key)
            self._through[key] = max((int(m.step) for m in hist), default=-1)
        return self._through[key]

    def flush(self) -> None:
        """Send buffered metrics."""
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload files (missing ones skipped)."""
        for p in paths:
            if Path(p).is_file():
                self._client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self._client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._client.set_terminated(self.run_id, status=status)
