"""Where datasets and clips live: a local directory or ``s3://bucket/prefix``, behind one small API.

:class:`Storage` wraps a pyarrow filesystem rooted at a URI. S3 goes through pyarrow's
``S3FileSystem`` (and boto3 for listing inputs) with an optional endpoint override, so any
S3-compatible store works (MinIO, Ceph, R2, moto). Credentials come from the usual AWS chain
(environment, profile, instance role); they are never stored in a ``Storage``.

Writes are atomic: a file is written under a hidden temporary name and renamed (local), or
uploaded in one request that only becomes visible when complete (S3). Readers of the tables skip
names starting with ``.`` or ``_``, so a build killed mid-write leaves nothing half-written behind.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ENDPOINT_ENV = ("PARLEY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables read, in order, for the S3 endpoint when none is given."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Everything is optional; empty means AWS defaults."""

    endpoint_url: str | None = None
    """An S3-compatible endpoint, e.g. ``http://127.0.0.1:9000`` (default: the env vars in
    :data:`ENDPOINT_ENV`, then AWS)."""
    region: str | None = None
    """Bucket region (default: ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1`` with a custom
    endpoint)."""

    def resolved(self) -> S3Options:
        """These options with the environment filled in (done on the driver, then shipped to workers)."""
        endpoint = self.endpoint_url or next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if endpoint and not region:
            region = "us-east-1"
        return S3Options(endpoint, region)

    def boto3_client(self):
        """A boto3 S3 client for these options, with credentials resolved now (a session of its own: boto3's
        default session keeps the first credentials it found for the life of the process)."""
        import boto3

        opts = self.resolved()
        return boto3.session.Session().client("s3", endpoint_url=opts.endpoint_url, region_name=opts.region)


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names an S3 location."""
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: not an s3://bucket/prefix URI")
    return bucket, key.strip("/")


def _s3_filesystem(opts: S3Options) -> pafs.FileSystem:
    opts = opts.resolved()
    kwargs: dict = {}
    if opts.endpoint_url:
        scheme, _, host = opts.endpoint_url.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if opts.region:
        kwargs["region"] = opts.region
    return pafs.S3FileSystem(**kwargs)


class Storage:
    """A directory tree on local disk or S3, addressed by paths relative to its root.

    Args:
        uri: a local path, ``file://`` URI or ``s3://bucket/prefix``.
        s3: how to reach S3 (ignored for local roots).

    Picklable: Ray workers receive the URI and options and open their own filesystem.
    """

    def __init__(self, uri: str | os.PathLike, s3: S3Options | None = None):
        uri = str(uri)
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        self.s3 = (s3 or S3Options()).resolved()
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.uri = f"s3://{bucket}/{key}".rstrip("/")
            self.root = f"{bucket}/{key}".rstrip("/")
        else:
            self.root = str(Path(uri).expanduser().resolve())
            self.uri = self.root
        self._fs: pafs.FileSystem | None = None
        self._client = None

    def __getstate__(self):
        return {"uri": self.uri, "root": self.root, "s3": self.s3, "_fs": None, "_client": None}

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def is_s3(self) -> bool:
        """Whether the root is on S3."""
        return is_s3(self.uri)

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem (opened on first use)."""
        if self._fs is None:
            self._fs = _s3_filesystem(self.s3) if self.is_s3 else pafs.LocalFileSystem()
        return self._fs

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (for pyarrow calls)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def child_uri(self, rel: str) -> str:
        """The full URI of ``rel``."""
        return f"{self.uri}/{rel}" if rel else self.uri

    def exists(self, rel: str) -> bool:
        """Whether a file or directory exists at ``rel``."""
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list_files(self, rel: str = "", suffix: str = "", recursive: bool = False) -> list[str]:
        """Paths (relative to the root) of files under ``rel`` ending in ``suffix``, sorted.

        Hidden names (``.x``, ``_x``) are skipped. A missing directory lists as empty.
        """
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=recursive)
        out = []
        for info in self.fs.get_file_info(selector):
            name = info.path.rsplit("/", 1)[-1]
            if info.type != pafs.FileType.File or name.startswith((".", "_")) or not name.endswith(suffix):
                continue
            out.append(info.path[len(self.root) + 1 :])
        return sorted(out)

    def sweep_temporaries(self, rel: str = "", older_than_s: float = 600.0) -> int:
        """Delete temporary files (``.name.xxxx.tmp``) under ``rel`` left by writes that were killed.

        Only local roots have them (S3 uploads are atomic). Files younger than ``older_than_s`` are kept,
        in case another process is writing them. Returns how many were deleted.
        """
        n = 0
        for rel_tmp in self.temporaries(rel, older_than_s):
            with suppress(OSError):
                os.remove(self.path(rel_tmp))
                n += 1
        return n

    def temporaries(self, rel: str = "", older_than_s: float = 0.0) -> list[str]:
        """Temporary files (``.name.xxxx.tmp``, see :meth:`temp_path`) under ``rel`` older than ``older_than_s``,
        relative to the root (none on S3, whose uploads are atomic)."""
        if self.is_s3 or not os.path.isdir(self.path(rel)):
            return []
        now, found = time.time(), []
        for p in Path(self.path(rel)).rglob(".*.tmp"):
            with suppress(OSError):
                if now - p.stat().st_mtime > older_than_s:
                    found.append(str(p)[len(self.root) + 1:])
        return sorted(found)

    def list_dirs(self, rel: str = "") -> list[str]:
        """Names of the directories directly under ``rel``, sorted."""
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(i.path.rsplit("/", 1)[-1] for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.Directory)

    def _mkdir(self, rel: str) -> None:
        if not self.is_s3:
            parent = os.path.dirname(self.path(rel))
            os.makedirs(parent, exist_ok=True)

    @contextmanager
    def _atomic(self, rel: str) -> Iterator[str]:
        """Yields a path to write; on success it becomes ``rel`` in one step."""
        if self.is_s3:  # a PUT / multipart upload only appears when complete
            yield self.path(rel)
            return
        tmp = self.temp_path(rel)
        try:
            yield tmp
            os.replace(tmp, self.path(rel))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically."""
        with self._atomic(rel) as p, self.fs.open_output_stream(p) as f:
            f.write(data)

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole file."""
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def temp_path(self, rel: str) -> str:
        """A local path to build the file ``rel`` in before :meth:`put_file` publishes it: a hidden sibling of
        ``rel`` on a local root (published by a rename), a file in the temporary directory for S3."""
        if self.is_s3:
            fd, tmp = tempfile.mkstemp(prefix="parley-", suffix=os.path.splitext(rel)[1])
            os.close(fd)
            return tmp
        self._mkdir(rel)
        head, _, name = self.path(rel).rpartition("/")
        return f"{head}/.{name}.{uuid.uuid4().hex[:8]}.tmp"

    def put_file(self, local: str, rel: str) -> None:
        """Publish a finished local file (from :meth:`temp_path`) as ``rel`` in one step and remove ``local``
        (a rename on a local root; an upload streamed from disk, visible only when complete, on S3)."""
        if not self.is_s3:
            os.replace(local, self.path(rel))
            return
        try:
            with open(local, "rb") as src, self.fs.open_output_stream(self.path(rel)) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        finally:
            os.remove(local)

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a Parquet file atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file."""
        return pq.read_table(self.path(rel), columns=columns, filesystem=self.fs)

    def s3_client(self):  # noqa: ANN201
        """A boto3 client for this root's S3 (opened on first use; for what pyarrow's filesystem lacks)."""
        if self._client is None:
            self._client = self.s3.boto3_client()
        return self._client

    def delete(self, rel: str) -> None:
        """Delete a file if it exists."""
        if self.is_s3:  # boto3: pyarrow's delete leaves an empty "directory" object behind an emptied prefix
            bucket, key = split_s3(self.child_uri(rel))
            self.s3_client().delete_object(Bucket=bucket, Key=key)
            return
        with suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))
        with suppress(OSError):  # a local directory left empty goes too (e.g. a partition)
            os.rmdir(os.path.dirname(self.path(rel)))

    def delete_dir(self, rel: str) -> None:
        """Delete a directory and everything under it, if it exists (``rel`` must not be the root)."""
        if not rel.strip("/"):
            raise ValueError("delete_dir needs a directory below the root")
        if self.is_s3:
            bucket, prefix = split_s3(self.child_uri(rel))
            client = self.s3_client()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        else:
            shutil.rmtree(self.path(rel), ignore_errors=True)

    @contextmanager
    def local_copy(self, rel: str) -> Iterator[str]:
        """A local path holding the file at ``rel`` (the file itself when local; a temp copy from S3)."""
        if not self.is_s3:
            yield self.path(rel)
            return
        suffix = os.path.splitext(rel)[1]
        fd, tmp = tempfile.mkstemp(prefix="parley-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(self.path(rel)) as src:
                shutil.copyfileobj(src, out, 8 << 20)
            yield tmp
        finally:
            os.remove(tmp)


def storage_for_file(uri: str, s3: S3Options | None = None) -> tuple[Storage, str]:
    """A :class:`Storage` of the directory holding ``uri`` and the file's name within it."""
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_s3(uri):
        head, _, name = uri.rpartition("/")
        return Storage(head, s3), name
    p = Path(uri).expanduser().resolve()
    return Storage(p.parent, s3), p.name
