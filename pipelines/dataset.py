"""A dataset root (local or S3): where each table's files go, writing one clip, reading tables back.

Layout (column names in :mod:`pipelines.schema`)::

    clips/<clip_id>.parquet                          one row per input clip (ok or failed)
    frames/identity=<identity>/<clip_id>.parquet     one row per frame and person
    identities/identities.parquet                    one row per identity, aggregated over its clips
    qc/<identity>.png, qc/<identity>.json, qc/quality.csv, qc/conversation_<conversation_id>.png

Conversations (two-person clips) are read from ``clips/`` and ``frames/`` by :mod:`pipelines.conversations`.

A clip is committed by its ``clips/`` row, written after its frame files. A clip without a row
is unfinished (a killed build) and is built again; its frame files are overwritten, never appended,
so rows are never duplicated.

This module reads the tables back and aggregates ``identities/``; the paths are in :mod:`pipelines.layout`,
writing a clip in :mod:`pipelines.commit`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.conversations import Conversation, conversations_table, read_conversation
from pipelines.layout import IDENTITIES_PATH, frames_path
from pipelines.storage import S3Options, Storage
from workers.config import BUILDER_VERSION

log = logging.getLogger(__name__)


class Dataset:
    """Reads a dataset's tables.

    Args:
        root: dataset URI (local path or ``s3://bucket/prefix``) or a :class:`Storage`.
        s3: how to reach S3.
    """

    def __init__(self, root: str | Storage, s3: S3Options | None = None):
        self.storage = root if isinstance(root, Storage) else Storage(root, s3)

    def __repr__(self) -> str:
        return f"Dataset({self.storage.uri!r})"

    def require(self) -> Dataset:
        """This dataset, when its root holds one (a ``clips/`` or ``frames/`` table).

        Raises:
            FileNotFoundError: not a dataset (named, with the command that makes one).
        """
        if not self.storage.exists("clips") and not self.storage.exists("frames"):
            raise FileNotFoundError(f"{self.storage.uri}: not a dataset (no clips/ or frames/); run "
                                    "`parley build-dataset` first")
        return self

    def _table(self, rel: str, sch: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        if not self.storage.exists(rel):
            return sch.empty_table().select(columns) if columns else sch.empty_table()
        dataset = pads.dataset(self.storage.path(rel), schema=sch, format="parquet", filesystem=self.storage.fs)
        return dataset.to_table(columns=columns)

    def clips_table(self, columns: list[str] | None = None) -> pa.Table:
        """The ``clips/`` table (empty when there is none), sorted by ``clip_id``.

        A file that does not read (cut short, overwritten by something else) is skipped with a warning and listed
        in :attr:`unreadable`: its clip counts as unbuilt, so the next build builds it again
        (:func:`pipelines.check.quarantine` moves such files aside).
        """
        if columns is not None and "clip_id" not in columns:
            columns = ["clip_id", *columns]
        try:
            table = self._table("clips", schema.CLIP_SCHEMA, columns)
            self.unreadable: list[str] = []
        except (pa.ArrowInvalid, OSError):  # one bad file fails the whole scan: read the files one by one
            parts, self.unreadable = [], []
            for rel in self.storage.list_files("clips", ".parquet"):
                try:
                    parts.append(self.storage.read_table(rel).cast(schema.CLIP_SCHEMA).select(
                        columns or schema.CLIP_SCHEMA.names))
                except (pa.ArrowInvalid, OSError, ValueError, KeyError) as exc:
                    log.warning("%s: unreadable clip row, ignored (%s)", self.storage.child_uri(rel), exc)
                    self.unreadable.append(rel)
            empty = schema.CLIP_SCHEMA.empty_table()
            table = pa.concat_tables(parts) if parts else (empty.select(columns) if columns else empty)
        return table.sort_by("clip_id")

    def clip_rows(self, columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """``clips/`` rows by ``clip_id``."""
        return {r["clip_id"]: r for r in self.clips_table(columns).to_pylist()}

    def committed(self) -> dict[str, list[str]]:
        """identity -> the clips holding its frames: ``ok`` rows of ``clips/`` that name the identity among their
        people with rows. Only these frame files are read; any other file under ``frames/`` (left by a build
        killed between writing a clip's frames and its row, or by a clip that moved) is an orphan."""
        out: dict[str, list[str]] = {}
        for cid, row in self.clip_rows(["status", "people"]).items():
            if row.get("status") != "ok":
                continue
            for p in row.get("people") or []:
                if p.get("n_rows") is None or p["n_rows"] > 0:
                    out.setdefault(p["identity"], []).append(cid)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def identity_names(self) -> list[str]:
        """Identities with committed frames (see :meth:`committed`)."""
        return list(self.committed())

    def frames(self, identity: str, columns: list[str] | None = None,
               clip_ids: Iterable[str] | None = None) -> pa.Table:
        """Frames of one identity from its committed clips (:meth:`committed`), in (clip_id, frame_index) order.

        Raises:
            KeyError: the identity has no committed frames in this dataset.
        """
        files = [self.storage.path(rel) for rel in self._frame_files(identity, clip_ids)]
        if columns is not None:
            columns = list(dict.fromkeys([*columns, "clip_id", "frame_index"]))
        if not files:
            return schema.FRAME_SCHEMA.empty_table().select(columns) if columns else schema.FRAME_SCHEMA.empty_table()
        dataset = pads.dataset(files, schema=schema.FRAME_SCHEMA, format="parquet", filesystem=self.storage.fs)
        return dataset.to_table(columns=columns).sort_by([("clip_id", "ascending"), ("frame_index", "ascending")])

    def identity_clips(self, identity: str) -> list[str]:
        """The committed clips of one identity (:meth:`committed`), sorted.

        Raises:
            KeyError: the identity has no committed frames in this dataset (the known ones are named).
        """
        committed = self.committed()
        if identity not in committed:
            known = ", ".join(committed) or "none"
            raise KeyError(f"{self.storage.uri}: no identity {identity!r} (identities: {known})")
        return committed[identity]

    def _frame_files(self, identity: str, clip_ids: Iterable[str] | None = None) -> list[str]:
        """The frame files (relative paths) of an identity's committed clips (of those in ``clip_ids``); a
        committed clip whose file is missing is left out with a warning."""
        clips = self.identity_clips(identity)
        files = []
        for cid in clips if clip_ids is None else sorted(set(clips) & set(clip_ids)):
            rel = frames_path(identity, cid)
            if self.storage.exists(rel):
                files.append(rel)
            else:
                log.warning("%s: clip %s is committed but its frame file is missing (`parley dataset check`)",
                            self.storage.uri, cid)
        return files

    def identity_version(self, identity: str) -> str:
        """A fingerprint of one identity's committed frames: its clips, their builder version and settings and
        row counts (12 hex digits). A rebuild or an added clip of this identity changes it; other identities'
        clips do not."""
        import hashlib

        rows = self.clip_rows(["status", "builder_version", "config_json", "people"])
        key = sorted((cid, r.get("builder_version"), r.get("config_json"),
                      [p.get("n_rows") for p in r.get("people") or [] if p["identity"] == identity])
                     for cid, r in rows.items() if cid in set(self.identity_clips(identity)))
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:12]

    def iter_frames(self, identity: str, columns: list[str] | None = None,
                    batch_rows: int = 128) -> Iterator[pa.RecordBatch]:
        """Frames of one identity's committed clips as record batches of up to ``batch_rows`` rows, in (clip_id,
        frame_index) order, read one row group at a time (memory: a batch, not the identity).

        Raises:
            KeyError: the identity has no committed frames in this dataset (raised by the call, not the first
                batch).
        """
        return self._read_batches(self._frame_files(identity), columns, batch_rows)

    def _read_batches(self, files: list[str], columns: list[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for rel in files:
            with self.storage.fs.open_input_file(self.storage.path(rel)) as f:
                pf = pq.ParquetFile(f)
                order = pf.read(columns=["frame_index"]).column("frame_index").to_numpy()
                if order.size and not (np.diff(order) > 0).all():  # written out of order: sort this file
                    yield from pf.read(columns=columns).sort_by("frame_index").to_batches(batch_rows)
                    continue
                yield from pf.iter_batches(batch_size=batch_rows, columns=columns)

    def identities(self) -> pa.Table:
        """The ``identities/`` table (empty when there is none)."""
        return self._table("identities", schema.IDENTITY_SCHEMA).sort_by("identity")

    def identity(self, name: str) -> dict[str, Any]:
        """One row of ``identities/``.

        Raises:
            KeyError: no such identity.
        """
        table = self.identities()
        rows = table.filter(pc.field("identity") == name).to_pylist()
        if not rows:
            known = ", ".join(table.column("identity").to_pylist()) or "none"
            raise KeyError(f"{self.storage.uri}: no identity {name!r} in identities/ (identities: {known})")
        return rows[0]

    def conversations(self) -> pa.Table:
        """The conversations (``ok`` clips of exactly two people), one row each, by id: ids, identities left to
        right, frames, speaker segments and each person's speaking share (:func:`pipelines.conversations.
        conversations_table`; only light frame columns are read)."""
        return conversations_table(self)

    def conversation(self, conversation_id: str, columns: list[str] | None = None) -> Conversation:
        """One conversation with both people's rows (``columns``, default all) aligned by frame, roles included
        (:func:`pipelines.conversations.read_conversation`).

        Raises:
            KeyError: no such conversation (the known ids are named).
        """
        return read_conversation(self, conversation_id, columns)


def _decode_rgb(png: bytes) -> np.ndarray | None:
    if not png:
        return None
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def aggregate_identities(clip_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``identities/`` rows from ``clips/`` rows: each identity over all its ``ok`` clips.

    Frame-weighted means of focal, principal point and identity coefficients; the widest near/far;
    the per-pixel median of the clips' background images (clips of one identity are expected to
    share a set-up; the spread of focal lengths across clips is kept as a check).
    """
    people: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for row in clip_rows:
        if row.get("status") != "ok":
            continue
        for p in row.get("people") or []:
            people.setdefault(p["identity"], []).append((row["clip_id"], p))
    out = []
    for ident in sorted(people):
        entries = sorted(people[ident], key=lambda e: e[0])
        w = np.array([max(p["n_frames"], 1) for _, p in entries], np.float64)
        w /= w.sum()

        def mean(key: str, ps=entries, w=w) -> float:
            return float(np.dot(w, [p[key] for _, p in ps]))

        focals = np.array([p["focal"] for _, p in entries])
        coeffs = np.stack([np.asarray(p["identity_coeffs"], np.float64) for _, p in entries])
        backgrounds = [b for b in (_decode_rgb(p["background_png"]) for _, p in entries) if b is not None]
        shapes = {b.shape for b in backgrounds}
        bg_png = b""
        if backgrounds:
            if len(shapes) > 1:  # crops of different sizes: keep the clip with most frames
                bg = backgrounds[int(np.argmax(w[: len(backgrounds)]))]
            else:
                bg = np.median(np.stack(backgrounds), axis=0).round().astype(np.uint8)
            bg_png = cv2.imencode(".png", cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))[1].tobytes()
        out.append(
            {
                "identity": ident,
                "clips": [c for c, _ in entries],
                "n_clips": len(entries),
                "n_rows": int(sum(p.get("n_rows") or 0 for _, p in entries)),
                "n_frames": int(sum(p["n_frames"] for _, p in entries)),
                "image_size": int(backgrounds[0].shape[0]) if backgrounds else None,
                "background_png": bg_png,
                "identity_coeffs": (w[:, None] * coeffs).sum(0).astype(np.float32),
                "focal": mean("focal"),
                "cx": mean("cx"),
                "cy": mean("cy"),
                "near": float(min(p["near"] for _, p in entries)),
                "far": float(max(p["far"] for _, p in entries)),
                "focal_spread": float(focals.std()),
                "reprojection_error_px": mean("reprojection_error_px"),
                "builder_version": BUILDER_VERSION,
            }
        )
    return out


def write_identities(storage: Storage, rows: list[dict[str, Any]]) -> None:
    """Replace the ``identities/`` table."""
    storage.write_table(IDENTITIES_PATH, schema.identities_table(rows))
