"""The clips a build reads: a local directory or glob, an S3 prefix, or a manifest CSV.

A manifest has a header with ``source_uri`` and ``identity`` (and optionally ``role``); relative
paths are relative to the manifest. Without a manifest, a clip's identity is its file stem.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from pipelines.dataset import IDENTITY_RE, safe_identity
from pipelines.storage import S3Options, is_s3, split_s3, storage_for_file
from workers.config import clip_id_for
from workers.errors import ParleyError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
"""File name endings listed from a directory or S3 prefix (a manifest may name any file)."""
ROLES = ("speaker", "listener", "solo")


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
    size: int = 0
    """Bytes, when the listing knows (used to start the largest clips first)."""

    def __post_init__(self):
        if not self.clip_id:
            object.__setattr__(self, "clip_id", clip_id_for(self.source_uri))


def _stem(uri: str) -> str:
    return os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES) and not os.path.basename(name).startswith((".", "_"))


def list_local(pattern: str) -> list[str]:
    """Video files under a directory (recursively) or matching a glob, as absolute paths."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = [str(f.resolve()) for f in p.rglob("*") if f.is_file() and _is_video(f.name)]
    elif p.is_file():
        files = [str(p.resolve())]
    else:
        files = [str(Path(f).resolve()) for f in glob.glob(str(p), recursive=True) if os.path.isfile(f)]
        if not files and not any(c in pattern for c in "*?["):
            raise InputError(f"{pattern}: no such file or directory")
    return sorted(set(files))


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
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "source_uri" not in fields:
        raise InputError(f"{uri}: manifest needs a header with 'source_uri' (and 'identity', optional 'role'); "
                         f"got {fields}")
    specs = []
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        src = row.get("source_uri", "")
        if not src:
            raise InputError(f"{uri}:{line}: empty source_uri")
        if not is_s3(src):
            src = src[len("file://") :] if src.startswith("file://") else src
            if not os.path.isabs(src) and storage.is_s3:  # normalised, so one clip has one URI (and clip_id)
                bucket, key = split_s3(storage.uri)
                src = f"s3://{bucket}/{posixpath.normpath(posixpath.join(key, src))}"
            elif not os.path.isabs(src):
                src = str(Path(storage.root, src).resolve())
        identity = row.get("identity") or safe_identity(_stem(src))
        if not IDENTITY_RE.match(identity):
            raise InputError(f"{uri}:{line}: identity {identity!r} must match {IDENTITY_RE.pattern}")
        role = row.get("role") or None
        if role is not None and role not in ROLES:
            raise InputError(f"{uri}:{line}: role {role!r} is not one of {', '.join(ROLES)}")
        specs.append(ClipSpec(src, identity, role))
    return specs


def list_inputs(inputs: str | list[str], s3: S3Options | None = None) -> list[ClipSpec]:
    """The clips to build from one or more inputs (directory, glob, S3 prefix, ``.csv`` manifest).

    A clip listed twice is kept once; listed twice with different identities is an error.

    Raises:
        InputError: an input cannot be listed, or a manifest is malformed.
    """
    specs: list[ClipSpec] = []
    for item in [inputs] if isinstance(inputs, str) else inputs:
        if item.lower().endswith(".csv"):
            specs += read_manifest(item, s3)
        elif is_s3(item):
            specs += [ClipSpec(u, safe_identity(_stem(u)), size=n) for u, n in list_s3(item, s3)]
        else:
            specs += [ClipSpec(u, safe_identity(_stem(u))) for u in list_local(item)]
    seen: dict[str, ClipSpec] = {}
    for s in specs:
        prev = seen.get(s.clip_id)
        if prev is None:
            seen[s.clip_id] = s
        elif (prev.identity, prev.role) != (s.identity, s.role):
            raise InputError(f"{s.source_uri}: listed twice, as {prev.identity!r} and as {s.identity!r}")
        else:
            log.warning("%s: listed twice; built once", s.source_uri)
    return list(seen.values())
