"""The clips a build reads: a local directory or glob, an S3 prefix, or a manifest CSV.

A manifest has a header with ``source_uri`` and ``identity`` (and optionally ``role``); relative
paths are relative to the manifest, and every path is resolved (``..``, symbolic links) before clips
are compared. The ``identity`` of a clip with several people may name them left to right, joined by ``|``
(``anchor|guest``), so one person seen in several clips is one identity; the clip then keeps that many people.
A roles file (:func:`read_role_overrides`) gives hand-checked speakers by time range.

Without a manifest, a clip's identity is its file name's stem (of the name as listed: a symbolic link's own name),
made safe for a partition name; two different clips whose stems give the same
identity (``josé`` / ``josè``, ``a/bob.mp4`` / ``b/bob.mp4``) are an error naming both: only a manifest
may put two clips under one identity.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.layout import IDENTITY_RE, safe_identity
from pipelines.storage import S3Options, is_s3, split_s3, storage_for_file
from workers.config import clip_id_for
from workers.errors import ParleyError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
"""File name endings listed from a directory or S3 prefix (a manifest may name any file)."""
ROLES = ("speaker", "listener", "solo")
EXTRA_FIELDS = "\0extra"
"""Where the CSV reader puts the values of a row longer than the header."""


class InputError(ParleyError):
    """The build's input cannot be listed (missing directory, bad manifest, ...)."""


@dataclass(frozen=True)
class ClipSpec:
    """One clip to build."""

    source_uri: str
    """Absolute local path or ``s3://`` URI."""
    identity: str
    role: str | None = None
    clip_id: str = ""
    roles: str | None = None
    """Hand-checked speakers (:func:`read_role_overrides`), as JSON ``[[start_s, end_s, speaker], ...]``."""
    size: int = 0
    """Bytes, when the listing knows (used to start the largest clips first)."""

    def __post_init__(self):
        if not self.clip_id:
            object.__setattr__(self, "clip_id", clip_id_for(self.source_uri))


def _stem(uri: str) -> str:
    return os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES) and not os.path.basename(name).startswith((".", "_"))


def list_local(pattern: str) -> list[tuple[str, str]]:
    """Video files under a directory (recursively) or matching a glob: (resolved absolute path, the name as
    listed), sorted. A symbolic link keeps its own name (its identity) and is built from its target."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        found = [f for f in p.rglob("*") if f.is_file() and _is_video(f.name)]
    elif p.is_file():
        found = [p]
    else:
        found = [Path(f) for f in glob.glob(str(p), recursive=True) if os.path.isfile(f)]
        if not found and not any(c in pattern for c in "*?["):
            raise InputError(f"{pattern}: no such file or directory")
    return sorted({(str(f.resolve()), f.name) for f in found})


def list_s3(uri: str, s3: S3Options | None = None) -> list[tuple[str, int]]:
    """Video objects under an S3 prefix (boto3 paginated listing): ``s3://`` URIs and sizes."""
    bucket, prefix = split_s3(uri)
    client = (s3 or S3Options()).boto3_client()
    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if _is_video(obj["Key"]):
                    out.append((f"s3://{bucket}/{obj['Key']}", int(obj.get("Size", 0))))
    except Exception as exc:  # botocore raises many types: name the location and the reason
        raise InputError(f"{uri}: cannot list ({type(exc).__name__}: {exc})") from exc
    return sorted(out)


def read_manifest(uri: str, s3: S3Options | None = None) -> list[ClipSpec]:
    """Clips listed in a manifest CSV (local or on S3)."""
    storage, name = storage_for_file(uri, s3)
    try:
        text = storage.read_bytes(name).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{uri}: cannot read manifest ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text), restkey=EXTRA_FIELDS)
    fields = [f.strip() for f in reader.fieldnames or []]
    missing = [c for c in ("source_uri", "identity") if c not in fields]
    if missing:
        raise InputError(f"{uri}: manifest needs a header with 'source_uri' and 'identity' (optional 'role'); "
                         f"{', '.join(map(repr, missing))} missing from {fields}")
    specs = []
    for line, raw in enumerate(reader, start=2):
        if EXTRA_FIELDS in raw:
            n = len(fields) + len(raw[EXTRA_FIELDS])
            raise InputError(f"{uri}:{line}: {n} fields but the header has {len(fields)} (a comma inside a value "
                             "must be quoted)")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        src = row.get("source_uri", "")
        if not src:
            raise InputError(f"{uri}:{line}: empty source_uri")
        src = _resolve(src, storage)  # normalised and resolved, so one file is one clip (one clip_id)
        identity = row.get("identity", "")
        if not identity:
            raise InputError(f"{uri}:{line}: empty identity (name the person; a clip listed outside a manifest "
                             "takes its file's stem)")
        names = identity.split("|")
        bad = [n for n in names if not IDENTITY_RE.match(n)]
        if bad:
            raise InputError(f"{uri}:{line}: identity {bad[0]!r} must match {IDENTITY_RE.pattern} (several people "
                             "are named left to right, joined by '|')")
        if len(set(names)) < len(names):
            raise InputError(f"{uri}:{line}: identity {identity!r} names one person twice")
        role = row.get("role") or None
        if role is not None and role not in ROLES:
            raise InputError(f"{uri}:{line}: role {role!r} is not one of {', '.join(ROLES)}")
        specs.append(ClipSpec(src, identity, role))
    return specs


def _resolve(src: str, storage) -> str:
    """A listed path as the one URI of its clip: ``s3://`` normalised; a local path relative to the listing file
    (on S3, relative to its prefix), resolved."""
    if is_s3(src):
        bucket, key = split_s3(src)
        return f"s3://{bucket}/{posixpath.normpath(key)}"
    src = src[len("file://") :] if src.startswith("file://") else src
    if not os.path.isabs(src) and storage.is_s3:
        bucket, key = split_s3(storage.uri)
        return f"s3://{bucket}/{posixpath.normpath(posixpath.join(key, src))}"
    return str(Path(storage.root, src).resolve())


ROLE_FIELDS = ("source_uri", "start_s", "end_s", "speaker")


def read_role_overrides(uri: str, s3: S3Options | None = None) -> dict[str, list[list[Any]]]:
    """Hand-checked speakers from a roles CSV: ``source_uri,start_s,end_s,speaker`` per row, where ``speaker``
    names a person of the clip (as in the dataset, e.g. ``guest`` or ``call_p1``), ``p<k>`` (k-th from the left)
    or ``none`` (nobody speaks). Paths are resolved as in a manifest.

    Returns:
        clip_id -> ``[[start_s, end_s, speaker], ...]`` in file order (a later row wins where ranges overlap).

    Raises:
        InputError: unreadable file, missing columns, bad times.
    """
    storage, name = storage_for_file(uri, s3)
    try:
        text = storage.read_bytes(name).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{uri}: cannot read roles file ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if missing := [c for c in ROLE_FIELDS if c not in fields]:
        raise InputError(f"{uri}: a roles file needs the header {','.join(ROLE_FIELDS)}; "
                         f"{', '.join(map(repr, missing))} missing from {fields}")
    out: dict[str, list[list[Any]]] = {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k}
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except ValueError:
            raise InputError(f"{uri}:{line}: start_s and end_s must be seconds, got {row['start_s']!r}, "
                             f"{row['end_s']!r}") from None
        if not end > start >= 0:
            raise InputError(f"{uri}:{line}: the range {start}-{end} s is empty or negative")
        if not row["source_uri"]:
            raise InputError(f"{uri}:{line}: empty source_uri")
        cid = clip_id_for(_resolve(row["source_uri"], storage))
        out.setdefault(cid, []).append([start, end, row["speaker"] or "none"])
    return out


def list_inputs(inputs: str | list[str], s3: S3Options | None = None, roles: str | None = None) -> list[ClipSpec]:
    """The clips to build from one or more inputs (directory, glob, S3 prefix, ``.csv`` manifest).

    A clip listed twice is kept once; listed twice with different identities is an error. ``roles`` is a roles
    CSV (:func:`read_role_overrides`) whose ranges go with their clips; a row for a clip not listed is ignored with
    a warning.

    Raises:
        InputError: an input cannot be listed, or a manifest is malformed.
    """
    specs: list[ClipSpec] = []
    derived: dict[str, str] = {}  # clip_id -> the name its identity was derived from (no manifest)
    for item in [inputs] if isinstance(inputs, str) else inputs:
        if item.lower().endswith(".csv"):
            specs += read_manifest(item, s3)
        elif is_s3(item):
            for u, n in list_s3(item, s3):
                specs.append(ClipSpec(u, safe_identity(_stem(u)), size=n))
                derived[specs[-1].clip_id] = u
        else:
            for path, name in list_local(item):
                specs.append(ClipSpec(path, safe_identity(_stem(name))))
                derived[specs[-1].clip_id] = path if name == os.path.basename(path) else f"{path} (as {name})"
    seen: dict[str, ClipSpec] = {}
    for s in specs:
        prev = seen.get(s.clip_id)
        if prev is None:
            seen[s.clip_id] = s
        elif (prev.identity, prev.role) != (s.identity, s.role):
            raise InputError(f"{s.source_uri}: listed twice, as {prev.identity!r} and as {s.identity!r}")
        else:
            log.warning("%s: listed twice; built once", s.source_uri)
    by_identity: dict[str, list[ClipSpec]] = {}
    for s in seen.values():
        by_identity.setdefault(s.identity, []).append(s)
    for ident, group in by_identity.items():
        guessed = [s for s in group if s.clip_id in derived]
        if guessed and len(group) > 1:  # a file-name identity never merges clips silently
            a = derived.get(group[0].clip_id, f"{group[0].source_uri} (manifest)")
            b = next(derived.get(s.clip_id, f"{s.source_uri} (manifest)") for s in group[1:])
            raise InputError(f"{a} and {b} both become identity {ident!r}: give each clip its identity in a "
                             "manifest (source_uri,identity), which may also name one person in several clips")
    if roles:
        overrides = read_role_overrides(roles, s3)
        for cid in sorted(set(overrides) - set(seen)):
            log.warning("%s: ranges for a clip that is not listed (clip_id %s); ignored", roles, cid)
        seen = {cid: replace(s, roles=json.dumps(overrides[cid])) if cid in overrides else s
                for cid, s in seen.items()}
    return list(seen.values())
