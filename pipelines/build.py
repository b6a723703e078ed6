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

This module is the driver's side (listing, resuming, the Ray plan, identities and QC); the settings are in
:mod:`pipelines.build_config`, the clip worker with its attempt markers and fault injection in
:mod:`pipelines.build_worker`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pyarrow.fs as pafs

from pipelines import dataset as D
from pipelines import ray_env
from pipelines.build_config import BuildConfig, BuildReport
from pipelines.build_worker import ATTEMPTS_DIR, ClipBuildWorker, new_build_id, record_failure
from pipelines.check import quarantine, sweep_orphans
from pipelines.commit import read_clip_row
from pipelines.inputs import ClipSpec, InputError, list_inputs
from pipelines.lease import Lease
from pipelines.storage import S3Options, Storage, is_s3
from workers.config import BUILDER_VERSION, clip_config_json

log = logging.getLogger(__name__)


BUILD_ENV = ("PARLEY_", "AWS_")
"""Environment variables (by prefix) a build hands to its workers (assets, S3 settings; see
:mod:`pipelines.ray_env`)."""


LIGHT = ["clip_id", "status", "error_kind", "builder_version", "config_json", "identity", "role", "role_overrides"]
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
    if (row.get("role_overrides") or None) != (spec.roles or None) and row.get("status") == "ok":
        return "hand-checked roles changed"
    if row.get("status") != "ok":
        if row.get("error_kind") != "input":
            return "retrying a failure that was not the input's fault"
        if retry_failed:
            return "retrying failed"
    return None


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
        previous = read_clip_row(out, spec.clip_id)
        reason = ("its build task failed past every retry without reporting (the worker died; the Ray logs of "
                  "the build say why)")
        on_row({**record_failure(out, spec, reason, "internal", previous), "total_s": 0.0})


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
    specs = list_inputs(config.inputs, config.s3, roles=config.roles)
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
