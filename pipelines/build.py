"""The dataset build on Ray Data: clips sharded over CPU workers, tables written by path.

Plan::

    list inputs -> skip clips already built -> ray.data.from_items(clip specs)
      -> map_batches(ClipBuildWorker, actor pool)   # each worker reads its clip from storage,
                                                    # writes frames/ then clips/ itself and returns
                                                    # one small status row per clip
      -> driver: progress, identities/ (aggregated over all clips), QC per changed identity

No frame ever passes through Ray's object store: a clip travels as its URI, results as a status
row. Every resource knob lives in :class:`Resources`; nothing else in the code base sets one.

Resuming: a clip whose ``clips/`` row was written by the same builder version with the same
settings is skipped. A clip that failed because its input is bad is skipped too (``--retry-failed``
retries it); one that failed for another reason (a crash, a storage hiccup) is retried.

Nothing loops or hangs for ever: every clip runs under a watchdog (:mod:`workers.watchdog`: a stall limit per
frame and a deadline from its length), and a clip whose worker process dies (out of memory, a native crash) is
tried at most :attr:`Resources.max_attempts` times in one build, counted in attempt markers under
``_build/<build id>/`` (Ray restarts the actor and retries the clip without end by itself), then gets a failed
row. A clip whose rebuild fails keeps the rows of its last good build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import dataset as D
from pipelines import ray_env
from pipelines.check import quarantine, sweep_orphans
from pipelines.inputs import ClipSpec, InputError, list_inputs
from pipelines.lease import Lease
from pipelines.storage import S3Options, Storage, is_s3, storage_for_file
from workers.config import BUILDER_VERSION, ClipConfig, clip_config_json
from workers.errors import ClipError

log = logging.getLogger(__name__)

STATUS_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("source_uri", pa.string()), ("identity", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("error_kind", pa.string()), ("n_frames", pa.int64()), ("n_people", pa.int64()),
    ("total_s", pa.float64()), ("worker", pa.string()), ("worker_peak_rss_mb", pa.float64()),
    ("kept_previous", pa.bool_()),
])
"""What a worker returns per clip (the rest of the clip's row is in ``clips/``)."""
STATUS_COLUMNS = STATUS_SCHEMA.names

BUILD_ENV = ("PARLEY_", "AWS_")
"""Environment variables (by prefix) a build hands to its workers (assets, S3 settings; see
:mod:`pipelines.ray_env`)."""


@dataclass
class Resources:
    """Every resource setting of the build, in one place. Defaults use the whole cluster."""

    num_workers: int | None = None
    """Concurrent clip workers (default: the cluster's CPUs // ``cpus_per_worker``, at most one per clip)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; torch/OpenCV threads follow (at least 1)."""
    memory_per_worker_gb: float = 2.0
    """Memory reserved per worker for scheduling (a worker peaks near 1.3 GB on 512 px crops)."""
    batch_size: int = 1
    """Clips per worker call."""
    stall_timeout_s: float = 120.0
    """A clip whose next frame takes longer than this (decode and per-frame work) fails as stalled."""
    clip_timeout_s: float = 600.0
    """A clip's deadline before its length is added (:attr:`clip_timeout_per_frame_s`)."""
    clip_timeout_per_frame_s: float = 0.5
    """Seconds the deadline grows per frame of the clip (a worker extracts ~15-80 frames/s per core)."""
    max_attempts: int = 2
    """Times a clip may kill its worker process (out of memory, a native crash) before it gets a failed row."""

    def threads(self) -> int:
        """torch / OpenCV threads of one worker."""
        return max(1, int(round(self.cpus_per_worker)))


@dataclass
class BuildConfig:
    """What ``parley build-dataset`` does."""

    inputs: list[str]
    """Directories, globs, ``s3://`` prefixes or manifest CSVs."""
    output: str
    """Dataset root (local directory or ``s3://bucket/prefix``)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    resources: Resources = field(default_factory=Resources)
    s3: S3Options = field(default_factory=S3Options)
    retry_failed: bool = False
    """Also rebuild clips that failed because of their input."""
    force: bool = False
    """Rebuild every listed clip."""
    qc: bool = True
    """Write the QC report of every identity that changed."""
    ray_address: str | None = None
    """Ray cluster to use (default: ``RAY_ADDRESS``, a running local cluster, or a new one)."""


@dataclass
class BuildReport:
    """Outcome of a build."""

    output: str
    listed: int = 0
    skipped: int = 0
    built: list[dict[str, Any]] = field(default_factory=list)
    """Status rows of the clips built in this run."""
    identities: list[str] = field(default_factory=list)
    qc_written: list[str] = field(default_factory=list)
    ok_total: int = 0
    """Listed clips whose row is ``ok`` after the build (built now or before)."""
    failed_total: int = 0
    """Listed clips whose row is ``failed`` after the build."""
    seconds: float = 0.0

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.built if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.built if r["status"] != "ok"]

    @property
    def frames(self) -> int:
        return int(sum(r["n_frames"] or 0 for r in self.ok))


LIGHT = ["clip_id", "status", "error_kind", "builder_version", "config_json", "identity", "role"]
"""``clips/`` columns a re-run reads to decide what to build."""


def rebuild_reason(spec: ClipSpec, row: dict[str, Any] | None, config_json: str, retry_failed: bool = False,
                   force: bool = False) -> str | None:
    """Why a listed clip must be built, or None when its existing row stands."""
    if row is None:
        return "new"
    if force:
        return "forced"
    if row.get("builder_version") != BUILDER_VERSION:
        return f"built by {row.get('builder_version')}, now {BUILDER_VERSION}"
    if row.get("config_json") != config_json:
        return "settings changed"
    if (row.get("identity"), row.get("role")) != (spec.identity, spec.role):
        return "identity or role changed"
    if row.get("status") != "ok":
        if row.get("error_kind") != "input":
            return "retrying a failure that was not the input's fault"
        if retry_failed:
            return "retrying failed"
    return None


ATTEMPTS_DIR = "_build"
"""Per-build scratch at the dataset root (attempt markers); readers skip names starting with ``_``."""
FAULT_ENV = "PARLEY_FAULT_INJECT"
"""Testing hook for the failure paths, comma-separated ``<action>:<text>``: ``exit`` ends the worker process,
``hang`` blocks it where no watchdog check runs, when a clip's source URI contains ``<text>``. Never set it outside
tests."""
STUCK_EXIT_CODE = 70
"""Exit status of a worker that ends itself because a clip's work would not stop."""


class ClipBuildWorker:
    """A Ray Data actor: builds clips into the dataset by path and returns one status row each.

    Args:
        output: the dataset root.
        clip: extraction settings.
        s3: how to reach S3 for inputs.
        threads: torch / OpenCV threads.
        resources: limits per clip (watchdog, attempts); default :class:`Resources`'.
        build_id: the build this worker belongs to (its attempt markers); default: a new one.
        env: the driver's environment for workers (:func:`pipelines.ray_env.forwarded_env`).
    """

    def __init__(self, output: Storage, clip: ClipConfig, s3: S3Options, threads: int = 1,
                 resources: Resources | None = None, build_id: str | None = None, env: dict[str, str] | None = None):
        ray_env.apply(env)  # the driver's assets / S3 settings, before any model or store is opened
        import cv2
        import torch

        from workers.clip import ClipProcessor  # the heavy modules load in the workers only

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.output = output
        self.s3 = s3
        self.limits = resources or Resources()
        self.build_id = build_id or new_build_id()
        self.config_json = clip_config_json(clip)
        self.processor = ClipProcessor(clip)
        # Ray Data has no teardown hook. MediaPipe's finalisers need its dispatcher thread pool, which
        # concurrent.futures shuts down in threading's exit hooks, before atexit; so close the models
        # from a threading exit hook registered after it (they run last-registered first).
        threading._register_atexit(self.processor.close)  # type: ignore[attr-defined]
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        specs = [ClipSpec(**r) for r in batch.to_pylist()]
        rows = [self.build_one(s) for s in specs]
        return pa.Table.from_pylist([{k: r.get(k) for k in STATUS_COLUMNS} for r in rows], schema=STATUS_SCHEMA)

    def build_one(self, spec: ClipSpec) -> dict[str, Any]:
        """Build one clip; any failure becomes a ``failed`` row (the build goes on)."""
        from workers.watchdog import ClipTimeout, Watchdog

        start = time.perf_counter()
        previous = self._previous_row(spec.clip_id)
        extra: dict[str, Any] = {"worker": self.worker, "config_json": self.config_json}
        marker = self._attempt_path(spec.clip_id)
        earlier = self._read_marker(marker)
        deaths = int(earlier.get("attempts", 0))
        if earlier.get("final") or deaths >= self.limits.max_attempts:
            reason = earlier.get("final") or (
                f"the build worker died {deaths} time(s) while building this clip (out of memory or a native "
                "crash; the worker's Ray log says which); not retried in this build")
            row = self._failure(spec, reason, "internal", previous, extra)
            row["total_s"] = time.perf_counter() - start
            return row
        self.output.write_bytes(marker, json.dumps({"attempts": deaths + 1, "worker": self.worker}).encode())
        limits = self.limits

        def stuck(reason: str) -> None:  # the watchdog's last resort, from its thread: record, then end
            with contextlib.suppress(Exception):
                self._failure(spec, reason, "internal", previous, extra)
                self.output.write_bytes(marker, json.dumps({"attempts": deaths + 1, "final": reason}).encode())
            log.error("%s: %s; ending worker %s", spec.source_uri, reason, self.worker)
            os._exit(STUCK_EXIT_CODE)

        try:
            source, name = storage_for_file(spec.source_uri, self.s3)
            with ExitStack() as stack:
                dog = stack.enter_context(Watchdog(
                    spec.source_uri, stall_s=limits.stall_timeout_s, base_s=limits.clip_timeout_s,
                    per_frame_s=limits.clip_timeout_per_frame_s, grace_s=max(limits.stall_timeout_s, 10.0),
                    on_stuck=stuck))
                _inject_fault(spec)
                t = time.perf_counter()
                try:
                    local = stack.enter_context(source.local_copy(name))
                except FileNotFoundError as exc:
                    raise ClipError(spec.source_uri, "no such file") from exc
                extra["download_s"] = time.perf_counter() - t
                frames = D.FrameFiles(self.output, spec.clip_id, spec.role)
                stack.callback(frames.discard)  # a failed clip leaves no temporary file behind
                result = self.processor(local, identity=spec.identity, clip_id=spec.clip_id,
                                        source_uri=spec.source_uri, watchdog=dog, sink=frames)
                t = time.perf_counter()
                extra.update(_stamp())
                row = D.write_clip(self.output, result, identity=spec.identity, role=spec.role, previous=previous,
                                   extra=extra, frames=frames)
                row["write_s"] = time.perf_counter() - t
        except ClipTimeout as exc:
            row = self._failure(spec, exc.reason, "internal", previous, extra)
        except ClipError as exc:
            row = self._failure(spec, exc.reason, "input", previous, extra)
        except Exception as exc:  # noqa: BLE001 (any other failure is recorded, and retried next run)
            log.error("%s: %s", spec.source_uri, traceback.format_exc())
            row = self._failure(spec, f"{type(exc).__name__}: {exc}", "internal", previous, extra)
        self.output.delete(marker)
        row["total_s"] = time.perf_counter() - start
        return row

    def _attempt_path(self, clip_id: str) -> str:
        return f"{ATTEMPTS_DIR}/{self.build_id}/{clip_id}.json"

    def _read_marker(self, rel: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self.output.read_bytes(rel)))
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError):  # a marker cut short by the death it records: that attempt counts
            return {"attempts": 1}

    def _previous_row(self, clip_id: str) -> dict[str, Any] | None:
        """The clip's earlier ``clips/`` row (its frame files may need cleaning up), if any."""
        try:
            return D.read_clip_row(self.output, clip_id)
        except OSError as exc:  # without the output nothing can be recorded: stop the build, say why
            raise OSError(f"{self.output.uri}: cannot reach the output storage ({exc})") from exc

    def _failure(self, spec, error, kind, previous, extra) -> dict[str, Any]:
        return D.write_failure(self.output, clip_id=spec.clip_id, source_uri=spec.source_uri, identity=spec.identity,
                               role=spec.role, error=error, error_kind=kind, previous=previous,
                               extra={**extra, **_stamp()})


def new_build_id() -> str:
    """A fresh build id: UTC time and a random suffix (sortable, unique)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _inject_fault(spec: ClipSpec) -> None:
    """The :data:`FAULT_ENV` testing hook."""
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        action, _, text = item.partition(":")
        if not text or text not in spec.source_uri:
            continue
        if action == "exit":
            os._exit(137)  # what the kernel's OOM killer leaves: the process gone, no exception, no cleanup
        if action == "hang":
            while True:  # no watchdog check ever runs here, as in a native call that never returns
                time.sleep(3600)


def _stamp() -> dict[str, Any]:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"worker_peak_rss_mb": rss_mb, "built_at": datetime.now(UTC).replace(microsecond=0)}


def _ray_init(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        if address == "local":  # a private cluster for this build alone: no dashboard needed
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(address=address)


def _run_workers(config: BuildConfig, todo: list[ClipSpec], on_row: Callable[[dict[str, Any]], None],
                 build_id: str) -> None:
    import ray
    import ray.data

    res = config.resources
    total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    workers = res.num_workers or max(1, int(total_cpus // res.cpus_per_worker))
    workers = max(1, min(workers, len(todo)))
    log.info("building %d clip(s) on %d worker(s) x %.2g CPU", len(todo), workers, res.cpus_per_worker)
    items = [asdict(s) for s in todo]
    ctx = ray.data.DataContext.get_current()
    # A clip whose task Ray gave up on must not end the build: its row is written below, the rest go on.
    errored_before, ctx.max_errored_blocks = ctx.max_errored_blocks, -1
    seen: set[str] = set()
    try:
        ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            ClipBuildWorker,
            fn_constructor_kwargs={"output": Storage(config.output, config.s3), "clip": config.clip,
                                   "s3": config.s3, "threads": res.threads(), "resources": res,
                                   "build_id": build_id, "env": ray_env.forwarded_env(BUILD_ENV)},
            batch_size=res.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=res.cpus_per_worker,
            memory=res.memory_per_worker_gb * 1024**3,
            # Ray restarts a dead actor and retries its clip for ever (its pool's default); the workers' attempt
            # markers turn the clip into a failed row after max_attempts deaths. (Ray 2.60 has no named parameter
            # for max_task_retries, and the ray_remote_args that would pass one are deprecated.)
        )
        for row in ds.iter_rows():
            seen.add(row["clip_id"])
            on_row(dict(row))
    finally:
        ctx.max_errored_blocks = errored_before
    out = Storage(config.output, config.s3)
    for spec in todo:  # clips Ray gave up on (the worker died past every retry, or its task failed)
        if spec.clip_id in seen:
            continue
        previous = D.read_clip_row(out, spec.clip_id)
        reason = ("its build task failed past every retry without reporting (the worker died; the Ray logs of "
                  "the build say why)")
        on_row({**D.write_failure(out, clip_id=spec.clip_id, source_uri=spec.source_uri, identity=spec.identity,
                                  role=spec.role, error=reason, error_kind="internal", previous=previous,
                                  extra=_stamp()), "total_s": 0.0})


def _qc(dataset_uri: str, s3: S3Options, identity: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    from pipelines.report import write_identity_report

    ray_env.apply(env)

    return write_identity_report(D.Dataset(dataset_uri, s3), identity)


def _write_qc(config: BuildConfig, identities: list[str]) -> list[dict[str, Any]]:
    """QC of these identities: as Ray tasks when this build started Ray, else here (a no-op re-run)."""
    if not identities:  # a no-op re-run never imports ray
        return []
    import ray

    if ray.is_initialized():
        task = ray.remote(num_cpus=min(1.0, config.resources.cpus_per_worker))(_qc)
        env = ray_env.forwarded_env(BUILD_ENV)
        return ray.get([task.remote(config.output, config.s3, i, env) for i in identities])
    return [_qc(config.output, config.s3, i) for i in identities]


def build(config: BuildConfig, on_row: Callable[[dict[str, Any]], None] | None = None) -> BuildReport:
    """Build (or bring up to date) a dataset from clips.

    The build holds the output's lease (:class:`pipelines.lease.Lease`) from its first write to its last: a
    second build into the same output is refused while this one runs.

    Args:
        config: inputs, output, settings and resources.
        on_row: called on the driver with each clip's status row as it finishes (progress).

    Returns:
        What was listed, skipped and built.

    Raises:
        InputError: the inputs cannot be listed, or the output is not a directory.
        LeaseError: another build is writing the output.
    """
    start = time.perf_counter()
    out = Storage(config.output, config.s3)
    if out.fs.get_file_info(out.root).type == pafs.FileType.File:
        raise InputError(f"{out.uri}: the output is a file; give a directory (new or a dataset) or s3:// prefix")
    specs = list_inputs(config.inputs, config.s3)
    build_id = new_build_id()
    with Lease(out, build_id):
        return _build_locked(config, specs, out, build_id, start, on_row)


def _build_locked(config: BuildConfig, specs: list[ClipSpec], out: Storage, build_id: str, start: float,
                  on_row: Callable[[dict[str, Any]], None] | None) -> BuildReport:
    dataset = D.Dataset(out)
    report = BuildReport(output=out.uri, listed=len(specs))
    for table in ("clips", "frames"):
        if swept := out.sweep_temporaries(table):
            log.info("%s: deleted %d temporary file(s) left by an interrupted build", out.child_uri(table), swept)
    existing = dataset.clip_rows(LIGHT)
    if dataset.unreadable:  # their clips count as unbuilt and are built again below
        moved = quarantine(out, dataset.unreadable)
        log.warning("%s: %d unreadable clip row(s) moved aside (%s); their clips are built again",
                    out.uri, len(moved), ", ".join(moved))
    config_json = clip_config_json(config.clip)
    todo = []
    for s in specs:
        why = rebuild_reason(s, existing.get(s.clip_id), config_json, config.retry_failed, config.force)
        if why:
            log.debug("%s: %s", s.source_uri, why)
            todo.append(s)
    report.skipped = len(specs) - len(todo)
    if todo:
        todo = _largest_first(todo)
        _ray_init(config.ray_address)

        def collect(row: dict[str, Any]) -> None:
            report.built.append(row)
            if on_row:
                on_row(row)

        try:
            _run_workers(config, todo, collect, build_id)
        finally:
            out.delete_dir(f"{ATTEMPTS_DIR}/{build_id}")
    if orphans := sweep_orphans(out):  # left by a build killed between a clip's frames and its row
        log.info("%s: deleted %d frame file(s) of no committed clip: %s", out.uri, len(orphans), ", ".join(orphans))

    after = dataset.clip_rows(LIGHT) if todo else existing
    status = [after[s.clip_id]["status"] for s in specs if s.clip_id in after]
    report.ok_total, report.failed_total = status.count("ok"), status.count("failed")
    old = {r["identity"]: r["clips"] for r in dataset.identities().select(["identity", "clips"]).to_pylist()}
    ok_ids = {cid for cid, r in after.items() if r["status"] == "ok"}
    if todo or ok_ids != {c for clips in old.values() for c in clips}:
        # re-aggregate from the full rows (people, backgrounds) only when the set of clips changed
        identities = D.aggregate_identities(dataset.clip_rows().values())
        D.write_identities(out, identities)
        current = {i["identity"]: i["clips"] for i in identities}
    else:
        current = old
    report.identities = sorted(current)
    for gone in set(old) - set(current):  # every clip of it moved away or failed: its report goes too
        for rel in (f"qc/{gone}.png", f"qc/{gone}.json"):
            out.delete(rel)
    if config.qc:
        built_ids = {c for c in (r["clip_id"] for r in report.built)}
        stale = [i for i, clips in current.items()
                 if set(clips) & built_ids or clips != old.get(i) or not out.exists(f"qc/{i}.png")]
        figures = _write_qc(config, stale)
        report.qc_written = [f["identity"] for f in figures]
        if figures or not out.exists("qc/quality.csv"):
            from pipelines.report import write_quality_table

            all_figures = _read_figures(out, report.identities)
            write_quality_table(dataset, all_figures)
    report.seconds = time.perf_counter() - start
    return report


def _read_figures(out: Storage, identities: list[str]) -> list[dict[str, Any]]:
    import json

    figures = []
    for ident in identities:
        rel = f"qc/{ident}.json"
        if out.exists(rel):
            figures.append(json.loads(out.read_bytes(rel)))
    return figures


def _largest_first(specs: list[ClipSpec]) -> list[ClipSpec]:
    """Clips ordered by size, largest first, so no worker is left with a long clip at the end."""

    def size(s: ClipSpec) -> int:
        if s.size or is_s3(s.source_uri):
            return s.size
        try:
            return os.path.getsize(s.source_uri)
        except OSError:
            return 0

    return sorted(specs, key=size, reverse=True)
