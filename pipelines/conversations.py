"""Conversations: the two-person clips of a dataset, read from its tables (no table of their own is written).

A **conversation** is an ``ok`` clip of exactly two people (``clips/`` ``n_people == 2``). Clips of three or more
people are not conversations (DialogueNeRF models a speaker and a listener; which pair of a group talks to which
is not recorded). Its two identities are its people left to right (``person`` 0 and 1), as the build named them
(``<clip identity>_p<k>``, or the manifest's ``anchor|guest``).

Its id is ``<safe stem of source_uri>-<first 6 hex digits of clip_id>`` (:func:`conversation_id`): deterministic,
readable, and a valid registry name in ``dialogue-<conversation_id>``.

**Segments** are the runs of a constant per-frame speaker over the clip's frames: the person whose ``speaking`` is
true in that frame (the builder marks at most one), or nobody. A segment with a speaker names the other person as
its listener; a silent segment names neither. Segments cover every frame once, in order.

Listing reads only the light columns (:data:`LIGHT_COLUMNS`) of the two people's frame files; one conversation read
with :func:`read_conversation` also holds both people's rows (any columns), aligned by ``frame_index``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipelines import schema
from pipelines.layout import frames_path, safe_identity
from workers.config import TARGET_FPS

if TYPE_CHECKING:
    from pipelines.dataset import Dataset

log = logging.getLogger(__name__)

LIGHT_COLUMNS = ["clip_id", "person", "frame_index", "role", "speaking", "speaking_confidence"]
"""``frames/`` columns a listing reads (no images, no arrays)."""
CLIP_COLUMNS = ["source_uri", "status", "n_people", "n_frames", "config_json", "people"]
"""``clips/`` columns that find the conversations."""

SEGMENT_TYPE = pa.struct([pa.field("start", pa.int32()), pa.field("end", pa.int32()),
                          pa.field("speaker", pa.string()), pa.field("listener", pa.string())])
"""One segment in :data:`CONVERSATIONS_SCHEMA` (``end`` exclusive)."""

CONVERSATIONS_SCHEMA = pa.schema([
    pa.field("conversation_id", pa.string(), nullable=False),
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string()),
    pa.field("identity_a", pa.string()),  # person 0, on the left
    pa.field("identity_b", pa.string()),  # person 1, on the right
    pa.field("fps", pa.float64()),  # the frames' rate (the build's, not the source's)
    pa.field("n_frames", pa.int32()),
    pa.field("n_segments", pa.int32()),
    pa.field("speaking_share_a", pa.float64()),  # fraction of the frames where identity_a speaks
    pa.field("speaking_share_b", pa.float64()),
    pa.field("segments", pa.list_(SEGMENT_TYPE)),
])
"""What :meth:`pipelines.dataset.Dataset.conversations` returns: one row per conversation."""


@dataclass(frozen=True)
class Segment:
    """A run of frames with one speaker (or nobody)."""

    start: int
    """First frame (``frame_index``)."""
    end: int
    """Frame after the last (exclusive)."""
    speaker: str | None
    """The identity speaking; None in a silent segment."""
    listener: str | None
    """The other identity; None in a silent segment."""

    @property
    def n_frames(self) -> int:
        return self.end - self.start


@dataclass
class Conversation:
    """One two-person clip: its people, who speaks when, and (from :func:`read_conversation`) both people's rows."""

    conversation_id: str
    clip_id: str
    source_uri: str
    identities: tuple[str, str]
    """The two people left to right (``person`` 0, 1)."""
    fps: float
    """Frame rate of the rows (the build's rate)."""
    n_frames: int
    """Frames of the conversation (one row per person each)."""
    segments: tuple[Segment, ...]
    frames: dict[str, pa.Table] = field(default_factory=dict)
    """identity -> that person's rows, one per frame in the same ``frame_index`` order for both; empty in a
    listing (filled by :func:`read_conversation`)."""

    def speaking_frames(self, identity: str) -> int:
        """Frames in which ``identity`` speaks."""
        return sum(s.n_frames for s in self.segments if s.speaker == identity)

    def speaking_share(self, identity: str) -> float:
        """Fraction of the frames in which ``identity`` speaks (0 for an empty conversation)."""
        return self.speaking_frames(identity) / self.n_frames if self.n_frames else 0.0


def conversation_id(source_uri: str, clip_id: str) -> str:
    """``<safe stem of source_uri>-<first 6 hex of clip_id>`` (``video_call-bc8a07``); see the module docstring."""
    stem = PurePosixPath(source_uri.split("?", 1)[0].rstrip("/")).stem
    return f"{safe_identity(stem)[:100]}-{clip_id[:6]}"


def segments_of(frame_index: np.ndarray, speaker: np.ndarray, identities: tuple[str, str]) -> list[Segment]:
    """The runs of a constant speaker.

    Args:
        frame_index: int [N] the frames, ascending.
        speaker: int [N] the person speaking per frame (0, 1), -1 for nobody.
        identities: the names of persons 0 and 1.

    Returns:
        Segments covering the N frames in order (a segment ends where the next starts).
    """
    n = len(speaker)
    if not n:
        return []
    edges = np.flatnonzero(np.diff(speaker)) + 1
    out = []
    for a, b in zip(np.r_[0, edges], np.r_[edges, n], strict=True):
        k = int(speaker[a])
        start = int(frame_index[a])
        end = int(frame_index[b]) if b < n else int(frame_index[-1]) + 1
        out.append(Segment(start, end, identities[k] if k >= 0 else None, identities[1 - k] if k >= 0 else None))
    return out


def _fps(row: dict[str, Any]) -> float:
    """The build's frame rate from the clip's settings (the ``fps`` column is the source's rate)."""
    try:
        return float(json.loads(row.get("config_json") or "{}").get("fps") or TARGET_FPS)
    except (ValueError, AttributeError):
        return TARGET_FPS


def _candidates(dataset: Dataset, identity: str | None = None) -> dict[str, dict[str, Any]]:
    """conversation_id -> ``clips/`` row of each conversation (of those naming ``identity``), sorted by id."""
    out: dict[str, dict[str, Any]] = {}
    for row in dataset.clips_table(CLIP_COLUMNS).to_pylist():
        people = sorted(row.get("people") or [], key=lambda p: p["person"])
        if row.get("status") != "ok" or row.get("n_people") != 2 or len(people) != 2:
            continue
        if identity is not None and identity not in {p["identity"] for p in people}:
            continue
        cid = conversation_id(row["source_uri"], row["clip_id"])
        if cid in out:
            log.warning("%s: clips %s and %s share the conversation id %s; the second is left out",
                        dataset.storage.uri, out[cid]["clip_id"], row["clip_id"], cid)
            continue
        out[cid] = {**row, "people": people}
    return dict(sorted(out.items()))


def _aligned(tables: list[pa.Table], clip_id: str) -> list[pa.Table]:
    """Each person's rows sorted by ``frame_index`` over the union of both people's frames: a frame a person has no
    row for gets a null row (its key columns filled), so the tables line up row by row."""
    sorted_tables, indices = [], []
    for t in tables:
        t = t.sort_by("frame_index")
        fi = t.column("frame_index").to_numpy()
        keep = np.r_[True, np.diff(fi) > 0] if len(fi) else np.zeros(0, bool)
        if not keep.all():
            log.warning("clip %s: duplicate frame rows; the first of each is kept", clip_id)
            t, fi = t.filter(pa.array(keep)), fi[keep]
        sorted_tables.append(t)
        indices.append(fi)
    union = np.union1d(*indices)
    out = []
    for t, fi in zip(sorted_tables, indices, strict=True):
        if len(fi) == len(union):
            out.append(t)
            continue
        log.warning("clip %s: person %s lacks rows for %d frame(s); they read as null rows", clip_id,
                    t.column("person")[0].as_py() if len(t) else "?", len(union) - len(fi))
        pos = np.searchsorted(fi, union).clip(0, max(len(fi) - 1, 0))
        missing = (fi[pos] != union) if len(fi) else np.ones(len(union), bool)
        taken = t.take(pa.array(pos, pa.int64(), mask=missing))
        for name, value in (("frame_index", pa.array(union, pa.int32())),
                            *[(c, pa.array([t.column(c)[0].as_py()] * len(union), t.schema.field(c).type))
                              for c in ("identity", "clip_id", "person") if c in t.column_names and len(t)]):
            taken = taken.set_column(taken.column_names.index(name), name, value)
        out.append(taken)
    return out


def _read(dataset: Dataset, cid: str, row: dict[str, Any], columns: list[str]) -> Conversation:
    """One conversation with its people's ``columns`` read and aligned (see :func:`_aligned`)."""
    names = (row["people"][0]["identity"], row["people"][1]["identity"])
    files = []
    for name in names:
        rel = frames_path(name, row["clip_id"])
        if not dataset.storage.exists(rel):
            raise FileNotFoundError(f"{dataset.storage.child_uri(rel)}: conversation {cid} is committed but this "
                                    "frame file is missing (`parley dataset check`)")
        files.append(dataset.storage.path(rel))
    tables = [pads.dataset(f, schema=schema.FRAME_SCHEMA, format="parquet", filesystem=dataset.storage.fs)
              .to_table(columns=columns) for f in files]
    tables = _aligned(tables, row["clip_id"])
    fi = tables[0].column("frame_index").to_numpy()
    speaking = np.stack([pc.fill_null(t.column("speaking"), False).to_numpy(zero_copy_only=False) for t in tables])
    if (both := speaking.all(0)).any():
        log.warning("clip %s: both people marked speaking in %d frame(s); given to %s", row["clip_id"],
                    int(both.sum()), names[0])
    speaker = np.where(speaking[0], 0, np.where(speaking[1], 1, -1))
    if len(fi) != row.get("n_frames"):
        log.warning("clip %s: %d aligned frames, its clips/ row says %s", row["clip_id"], len(fi), row.get("n_frames"))
    return Conversation(
        conversation_id=cid, clip_id=row["clip_id"], source_uri=row["source_uri"], identities=names, fps=_fps(row),
        n_frames=len(fi), segments=tuple(segments_of(fi, speaker, names)), frames=dict(zip(names, tables,
                                                                                           strict=True)),
    )


def list_conversations(dataset: Dataset, identity: str | None = None) -> list[Conversation]:
    """The dataset's conversations (those of ``identity`` only, when given), by id, without their rows.

    Only :data:`LIGHT_COLUMNS` are read. A conversation whose frame file is missing is left out with a warning.
    """
    out = []
    for cid, row in _candidates(dataset, identity).items():
        try:
            conv = _read(dataset, cid, row, LIGHT_COLUMNS)
        except FileNotFoundError as exc:
            log.warning("%s; left out", exc)
            continue
        conv.frames = {}
        out.append(conv)
    return out


def conversations_table(dataset: Dataset, identity: str | None = None) -> pa.Table:
    """:func:`list_conversations` as a table of :data:`CONVERSATIONS_SCHEMA` (empty when there are none)."""
    rows = []
    for c in list_conversations(dataset, identity):
        a, b = c.identities
        rows.append({
            "conversation_id": c.conversation_id, "clip_id": c.clip_id, "source_uri": c.source_uri,
            "identity_a": a, "identity_b": b, "fps": c.fps, "n_frames": c.n_frames, "n_segments": len(c.segments),
            "speaking_share_a": c.speaking_share(a), "speaking_share_b": c.speaking_share(b),
            "segments": [{"start": s.start, "end": s.end, "speaker": s.speaker, "listener": s.listener}
                         for s in c.segments],
        })
    return pa.Table.from_pylist(rows, schema=CONVERSATIONS_SCHEMA)


def read_conversation(dataset: Dataset, conversation_id: str, columns: list[str] | None = None) -> Conversation:
    """One conversation with both people's rows aligned by frame (:attr:`Conversation.frames`).

    Args:
        dataset: the dataset.
        conversation_id: as listed.
        columns: ``frames/`` columns to read (default: all); ``identity`` and :data:`LIGHT_COLUMNS` are always read.

    Raises:
        KeyError: no such conversation (the known ids are named).
        FileNotFoundError: a frame file of the conversation is missing.
    """
    candidates = _candidates(dataset)
    if conversation_id not in candidates:
        known = ", ".join(candidates) or "none"
        raise KeyError(f"{dataset.storage.uri}: no conversation {conversation_id!r} (conversations: {known})")
    wanted = list(dict.fromkeys(["identity", *LIGHT_COLUMNS, *(columns or schema.FRAME_SCHEMA.names)]))
    return _read(dataset, conversation_id, candidates[conversation_id], wanted)
