"""The build's clip worker: a Ray Data actor that builds clips into the dataset by path, one status row each.

Besides the clip's work (:class:`workers.clip.ClipProcessor`), the worker guards against clips that never end:
each runs under a watchdog, and attempt markers under ``_build/<build id>/`` count how often a clip killed its
worker process, so a clip that does so :attr:`Resources.max_attempts` times gets a failed row instead of being
retried for ever. :data:`FAULT_ENV` injects those failures in tests. The worker imports no Ray: the plan in
:mod:`pipelines.build` runs it.
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
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from pipelines import ray_env
from pipelines.build_config import Resources
from pipelines.commit import FrameFiles, read_clip_row, write_clip, write_failure
from pipelines.inputs import ClipSpec
from pipelines.storage import S3Options, Storage, storage_for_file
from workers.config import ClipConfig, clip_config_json
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
                frames = FrameFiles(self.output, spec.clip_id, spec.role)
                stack.callback(frames.discard)  # a failed clip leaves no temporary file behind
                extra["role_overrides"] = spec.roles
                result = self.processor(local, identity=spec.identity, clip_id=spec.clip_id,
                                        source_uri=spec.source_uri, watchdog=dog, sink=frames,
                                        role_overrides=role_overrides(spec))
                t = time.perf_counter()
                extra.update(_stamp())
                row = write_clip(self.output, result, identity=spec.identity, role=spec.role, previous=previous,
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
            return read_clip_row(self.output, clip_id)
        except OSError as exc:  # without the output nothing can be recorded: stop the build, say why
            raise OSError(f"{self.output.uri}: cannot reach the output storage ({exc})") from exc

    def _failure(self, spec, error, kind, previous, extra) -> dict[str, Any]:
        return record_failure(self.output, spec, error, kind, previous, extra)


def record_failure(storage: Storage, spec: ClipSpec, error: str, kind: str, previous: dict[str, Any] | None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a clip that failed (:func:`pipelines.commit.write_failure`), stamped with this process's peak
    memory and the time; the worker and the driver (for clips Ray gave up on) write failures the same way."""
    return write_failure(storage, clip_id=spec.clip_id, source_uri=spec.source_uri, identity=spec.identity,
                         role=spec.role, error=error, error_kind=kind, previous=previous,
                         extra={**(extra or {}), **_stamp()})


def role_overrides(spec: ClipSpec) -> list[Any]:
    """The clip's hand-checked speakers as :class:`workers.speakers.RoleOverride` (none when it has none)."""
    from workers.speakers import RoleOverride

    return [RoleOverride(float(a), float(b), who) for a, b, who in json.loads(spec.roles or "[]")]


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
