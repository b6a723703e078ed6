"""Writing one clip into a dataset: the frame-file sink, the commit (its ``clips/`` row) and failures.

A clip is committed by its ``clips/`` row, written after its frame files (:func:`write_clip`). A clip without a
row is unfinished (a killed build) and is built again; its frame files are overwritten, never appended, so rows are
never duplicated. A failed rebuild keeps the last good rows (:func:`write_failure`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.layout import clip_path, frames_path
from pipelines.storage import Storage
from workers.config import BUILDER_VERSION, SINK_ROWS

if TYPE_CHECKING:
    from workers.clip import ClipResult


def _frame_files(row: dict[str, Any] | None) -> set[str]:
    if not row:
        return set()
    return {frames_path(p["identity"], row["clip_id"]) for p in row.get("people") or []}


class FrameFiles:
    """A sink for a clip's frame rows (:class:`workers.clip.ClipProcessor`'s ``sink``): each batch becomes a
    Parquet row group of its identity's file, written to a local temporary file as it comes, so a worker holds
    one batch, not the clip. :func:`write_clip` publishes the files; :meth:`discard` drops them.

    Args:
        storage: the dataset root.
        clip_id: the clip.
        role: the role listed for the clip (set on a single-person clip's rows, whose role is ``solo``).
    """

    def __init__(self, storage: Storage, clip_id: str, role: str | None = None):
        self.storage = storage
        self.clip_id = clip_id
        self.role = role
        self._writers: dict[str, tuple[str, pq.ParquetWriter]] = {}
        self.n_rows: dict[str, int] = {}
        """Rows written per identity."""

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        by_identity: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if self.role and row.get("role") == "solo":
                row["role"] = self.role
            by_identity.setdefault(row["identity"], []).append(row)
        for ident, batch in by_identity.items():
            if ident not in self._writers:
                tmp = self.storage.temp_path(frames_path(ident, self.clip_id))
                self._writers[ident] = (tmp, pq.ParquetWriter(tmp, schema.FRAME_SCHEMA, compression="zstd"))
            self._writers[ident][1].write_table(schema.frames_table(batch))
            self.n_rows[ident] = self.n_rows.get(ident, 0) + len(batch)

    def publish(self) -> set[str]:
        """Close the files and move them into the dataset; returns their paths (relative to the root)."""
        written = set()
        for ident, (tmp, writer) in list(self._writers.items()):
            writer.close()
            self.storage.put_file(tmp, frames_path(ident, self.clip_id))
            written.add(frames_path(ident, self.clip_id))
            del self._writers[ident]
        return written

    def discard(self) -> None:
        """Drop files not published (a failed clip)."""
        for tmp, writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(OSError):
                os.remove(tmp)
        self._writers.clear()


def read_clip_row(storage: Storage, clip_id: str) -> dict[str, Any] | None:
    """A clip's ``clips/`` row, or None when it has none or it does not read (it is then built again).

    Raises:
        OSError: the storage cannot be reached.
    """
    try:
        return storage.read_table(clip_path(clip_id)).to_pylist()[0]
    except (FileNotFoundError, pa.ArrowInvalid, IndexError):
        return None


def write_clip(storage: Storage, result: ClipResult, *, identity: str, role: str | None = None,
               previous: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
               frames: FrameFiles | None = None) -> dict[str, Any]:
    """Write one extracted clip: its frame files, then its ``clips/`` row (the commit).

    Args:
        storage: the dataset root.
        result: what the worker extracted.
        identity: the identity the clip was listed under.
        role: the role listed for the clip (applies to a single-person clip's rows).
        previous: the clip's earlier row, if any; frame files it names that this build does not
            write again are deleted (e.g. the identity changed).
        extra: more ``clips/`` columns (timings, worker).
        frames: the sink the rows were streamed to (its files are published), instead of ``result.rows``.

    Returns:
        The ``clips/`` row written.
    """
    cid = result.summary["clip_id"]
    if frames is None:
        frames = FrameFiles(storage, cid, role if result.summary["n_people"] == 1 else None)
        for k in range(0, len(result.rows), SINK_ROWS):  # a row group per batch, as the worker streams them
            frames(result.rows[k:k + SINK_ROWS])
    counts = frames.n_rows
    written = frames.publish()
    people = []
    for p in result.people:
        d = asdict(p)
        d["n_rows"] = int(counts.get(p.identity, 0))
        people.append(d)
    row = {**result.summary, **(extra or {}), "identity": identity, "role": role, "status": "ok", "error": None,
           "error_kind": None, "people": people}
    storage.write_table(clip_path(cid), schema.clips_table([row]))
    for stale in _frame_files(previous) - written:
        storage.delete(stale)
    return row


REBUILD_FAILED = "last rebuild failed"
"""How the ``warning`` of a clip row kept after a failed rebuild begins (:func:`write_failure`)."""


def write_failure(storage: Storage, *, clip_id: str, source_uri: str, identity: str, role: str | None,
                  error: str, error_kind: str, previous: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a clip that failed: a ``clips/`` row with ``status=failed`` and the reason.

    A clip whose earlier build is good (an ``ok`` row whose frame files are all there) keeps that row and those
    files: a rebuild that fails (a source missing for a moment, a crash, a new builder version that cannot read
    it) never loses data. The kept row's ``warning`` says the rebuild failed and why, and the next build tries
    again (its row still names the old builder version or settings). Otherwise frame files of an earlier build
    are deleted, so ``frames/`` only holds rows of clips whose ``clips/`` row says ``ok``.

    Returns:
        The failure (``status=failed``), with ``kept_previous`` True when the last good rows were kept.
    """
    row = {"clip_id": clip_id, "source_uri": source_uri, "identity": identity, "role": role, "status": "failed",
           "error": error, "error_kind": error_kind, "builder_version": BUILDER_VERSION, "n_frames": 0,
           "n_people": 0, **(extra or {})}
    if previous and previous.get("status") == "ok" and all(storage.exists(f) for f in _frame_files(previous)):
        kept = dict(previous)
        note = (f"{REBUILD_FAILED} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, builder {BUILDER_VERSION}; "
                f"{error_kind} error: {error}); these rows are from the last good build")
        earlier = kept.get("warning") or ""
        if earlier.startswith(REBUILD_FAILED):  # replace the note of an earlier failed rebuild, keep the rest
            earlier = earlier.split(" || ", 1)[1] if " || " in earlier else ""
        kept["warning"] = f"{note} || {earlier}" if earlier else note
        storage.write_table(clip_path(clip_id), schema.clips_table([kept]))
        return {**row, "kept_previous": True}
    storage.write_table(clip_path(clip_id), schema.clips_table([row]))
    for stale in _frame_files(previous):
        storage.delete(stale)
    return {**row, "kept_previous": False}
