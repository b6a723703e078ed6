"""``parley dataset check``: a dataset's consistency (an fsck), and the repairs a build makes by itself.

What is checked, against the contract of :mod:`pipelines.dataset` (a clip is committed by its ``ok`` row in
``clips/``, which names the identities it wrote rows for, and how many):

* ``unreadable_clip_row``: a ``clips/`` file that does not read as a clip row. Fix: moved to
  ``clips/_quarantine/`` (the clip is built again by the next build).
* ``orphan``: a ``frames/`` file that no committed clip names (a build killed between a clip's frames and its
  row, or a clip whose identity moved). Readers never read it. Fix: deleted.
* ``missing_frames``: a committed clip's frame file is not there. ``row_count``: its rows differ from the count
  its clip row gives. ``unreadable_frames`` / ``schema``: it does not read, or its columns are not the
  ``frames/`` schema. Fix for these: the clip row is moved to ``clips/_quarantine/``, so the clip is built again.
* ``identities``: ``identities/`` does not list exactly the committed clips per identity. Fix: re-aggregated.
* ``temporary``: a hidden temporary file of a killed write. Fix: deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import dataset as D
from pipelines import schema
from pipelines.layout import IDENTITIES_PATH, clip_path, frames_path
from pipelines.storage import Storage

log = logging.getLogger(__name__)

QUARANTINE = "clips/_quarantine"


@dataclass
class Problem:
    """One inconsistency."""

    kind: str
    path: str
    """The file, relative to the dataset root."""
    detail: str


@dataclass
class CheckReport:
    """What :func:`check_dataset` found (and fixed)."""

    uri: str
    problems: list[Problem] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    """What the fix did, one line per action."""
    counts: dict[str, int] = field(default_factory=dict)
    """``clips_ok``, ``clips_failed``, ``identities``, ``frame_files``, ``frame_rows``."""

    @property
    def ok(self) -> bool:
        return not self.problems


def quarantine(out: Storage, rels: list[str]) -> list[str]:
    """Move ``clips/`` files aside into :data:`QUARANTINE` (kept for inspection; readers skip ``_`` names);
    returns where they went."""
    moved = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for rel in rels:
        dst = f"{QUARANTINE}/{rel.rsplit('/', 1)[-1]}.{stamp}"
        try:
            out.write_bytes(dst, out.read_bytes(rel))
        except OSError as exc:  # unreadable even as bytes: nothing to keep
            log.warning("%s: cannot copy before quarantine (%s)", out.child_uri(rel), exc)
        out.delete(rel)
        moved.append(dst)
    return moved


def _frame_files(out: Storage) -> list[tuple[str, str, str]]:
    """(path, identity, clip_id) of every file under ``frames/``."""
    found = []
    for rel in out.list_files("frames", ".parquet", recursive=True):
        parts = rel.split("/")
        if len(parts) == 3 and parts[1].startswith("identity="):
            found.append((rel, parts[1][len("identity="):], parts[2][: -len(".parquet")]))
    return found


def orphans(out: Storage, committed: dict[str, list[str]] | None = None) -> list[str]:
    """``frames/`` files of no committed clip (paths relative to the root)."""
    committed = D.Dataset(out).committed() if committed is None else committed
    pairs = {(ident, cid) for ident, cids in committed.items() for cid in cids}
    return [rel for rel, ident, cid in _frame_files(out) if (ident, cid) not in pairs]


def sweep_orphans(out: Storage) -> list[str]:
    """Delete :func:`orphans` (only while holding the output's lease: a running build's files are not orphans
    until its row is written); returns what was deleted."""
    gone = orphans(out)
    for rel in gone:
        out.delete(rel)
    return gone


def check_dataset(out: Storage, fix: bool = False) -> CheckReport:
    """Check a dataset (and with ``fix``, repair it: see the module's docstring).

    Args:
        out: the dataset root.
        fix: repair what is found (take the output's lease first: see ``parley dataset check --fix``).

    Returns:
        Every problem found, the repairs made and the dataset's counts.
    """
    ds = D.Dataset(out)
    report = CheckReport(out.uri)
    rows = ds.clip_rows()
    for rel in ds.unreadable:
        report.problems.append(Problem("unreadable_clip_row", rel, "does not read as a clips/ row"))
    committed = ds.committed()
    rebuild: set[str] = set()
    n_rows = 0
    for cid, row in rows.items():
        if row.get("status") != "ok":
            continue
        for p in row.get("people") or []:
            if p.get("n_rows") == 0:
                continue
            rel = frames_path(p["identity"], cid)
            if not out.exists(rel):
                report.problems.append(Problem("missing_frames", rel, f"clip {cid} is committed without this file"))
                rebuild.add(cid)
                continue
            try:
                with out.fs.open_input_file(out.path(rel)) as f:
                    meta = pq.ParquetFile(f)
                    have, count = meta.schema_arrow, meta.metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                report.problems.append(Problem("unreadable_frames", rel, str(exc)[:200]))
                rebuild.add(cid)
                continue
            bad = [f.name for f in schema.FRAME_SCHEMA
                   if f.name not in have.names or not _castable(have.field(f.name).type, f.type)]
            if bad:
                report.problems.append(Problem("schema", rel, f"columns missing or of another type: {bad}"))
                rebuild.add(cid)
            if p.get("n_rows") is not None and count != p["n_rows"]:
                report.problems.append(Problem("row_count", rel, f"{count} rows, its clip row says {p['n_rows']}"))
                rebuild.add(cid)
            n_rows += count
    orphaned = orphans(out, committed)
    report.problems += [Problem("orphan", rel, "no committed clip names this file") for rel in orphaned]
    listed = {r["identity"]: sorted(r["clips"]) for r in ds.identities().select(["identity", "clips"]).to_pylist()}
    if listed != committed:
        report.problems.append(Problem("identities", IDENTITIES_PATH,
                                       "does not list the committed clips of each identity"))
    temporaries = out.temporaries("clips") + out.temporaries("frames")
    report.problems += [Problem("temporary", rel, "left by a killed write") for rel in temporaries]
    report.counts = {"clips_ok": sum(r.get("status") == "ok" for r in rows.values()),
                     "clips_failed": sum(r.get("status") == "failed" for r in rows.values()),
                     "identities": len(committed), "frame_files": len(_frame_files(out)), "frame_rows": n_rows}
    if fix and report.problems:
        _repair(out, ds, report, rebuild, orphaned, temporaries)
    return report


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    if have == want:
        return True
    try:
        pa.array([], type=have).cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _repair(out: Storage, ds: D.Dataset, report: CheckReport, rebuild: set[str], orphaned: list[str],
            temporaries: list[str]) -> None:
    if ds.unreadable:
        for dst in quarantine(out, list(ds.unreadable)):
            report.fixed.append(f"moved an unreadable clip row to {dst} (the next build builds its clip again)")
    for cid in sorted(rebuild):
        for dst in quarantine(out, [clip_path(cid)]):
            report.fixed.append(f"moved clip {cid}'s row to {dst}: its frames are damaged; the next build "
                                "builds it again")
    for rel in orphaned + orphans(out):  # the quarantined clips' files are orphans now too
        if out.exists(rel):
            out.delete(rel)
            report.fixed.append(f"deleted orphan {rel}")
    for rel in temporaries:
        out.delete(rel)
        report.fixed.append(f"deleted temporary {rel}")
    identities = D.aggregate_identities(D.Dataset(out).clip_rows().values())
    D.write_identities(out, identities)
    report.fixed.append(f"rewrote {IDENTITIES_PATH} ({len(identities)} identities)")
