"""One writer per dataset: a build holds a lease on its output, and a second build into it is refused.

The lease is ``_build/lease.json`` at the dataset root (readers skip ``_`` names). On a local root the holder
keeps an exclusive ``flock`` on it for the whole build: the kernel releases it when the holder's process ends,
however it ends, so a dead build never blocks the next one. On S3 the lease is created with a conditional put
(``If-None-Match: *``: only one creator wins), renewed by a background thread every :data:`RENEW_S` seconds with
``If-Match`` on its own ETag, and taken over, again with ``If-Match``, once it has not been renewed for
:data:`STALE_S` seconds (its holder died). A store without conditional writes (some older S3-compatible servers)
accepts every put: the lease then only tells builds apart, it cannot stop them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from pipelines.storage import Storage, split_s3
from workers.errors import ParleyError

log = logging.getLogger(__name__)

LEASE_PATH = "_build/lease.json"
RENEW_S = 30.0
"""Seconds between renewals of an S3 lease."""
STALE_S = 300.0
"""An S3 lease not renewed for this long belongs to a dead build and is taken over."""


class LeaseError(ParleyError):
    """Another build holds the output (the message says which, since when, and what to do)."""


def _describe(info: dict[str, Any], uri: str) -> str:
    age = ""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        age = f", renewed {time.time() - float(info['renewed']):.0f} s ago"
    return (f"{uri}: another build is writing this dataset (build {info.get('build_id', '?')} on "
            f"{info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started', '?')}{age}); "
            "wait for it to finish. Two builds into one output would interleave their rows.")


class Lease:
    """The lease of one build on one dataset root; a context manager.

    Args:
        storage: the dataset root.
        build_id: the build taking it (shown to a refused build).
        stale_s: (S3) an unrenewed lease older than this is taken over.
        renew_s: (S3) seconds between renewals.

    Raises:
        LeaseError: on enter, another live build holds the lease.
    """

    def __init__(self, storage: Storage, build_id: str, stale_s: float = STALE_S, renew_s: float = RENEW_S):
        self.storage = storage
        self.build_id = build_id
        self.stale_s = stale_s
        self.renew_s = renew_s
        self.info = {"build_id": build_id, "host": socket.gethostname(), "pid": os.getpid(),
                     "started": datetime.now(UTC).replace(microsecond=0).isoformat(), "renewed": time.time()}
        self._fd: int | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        if self.storage.is_s3:
            self._acquire_s3()
        else:
            self._acquire_local()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # local: flock ------------------------------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        import fcntl

        path = self.storage.path(LEASE_PATH)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            raise LeaseError(_describe(holder, self.storage.uri)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        self._fd = fd

    # S3: conditional puts ------------------------------------------------------------------------------------------
    def _key(self) -> tuple[str, str]:
        bucket, key = split_s3(self.storage.child_uri(LEASE_PATH))
        return bucket, key

    def _put(self, client, **cond: str) -> str:  # noqa: ANN001
        bucket, key = self._key()
        self.info["renewed"] = time.time()
        resp = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self.info).encode(), **cond)
        return str(resp.get("ETag", ""))

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError

        client = self.storage.s3_client()
        bucket, key = self._key()
        try:
            self._etag = self._put(client, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412",
                                                                  "ConditionalRequestConflict"):
                raise
            obj = client.get_object(Bucket=bucket, Key=key)
            try:
                holder = json.loads(obj["Body"].read() or b"{}")
            except ValueError:
                holder = {}
            age = time.time() - float(holder.get("renewed", 0) or 0)
            if age < self.stale_s:
                raise LeaseError(_describe(holder, self.storage.uri)) from None
            log.warning("%s: taking over the lease of build %s, not renewed for %.0f s (its build died)",
                        self.storage.uri, holder.get("build_id"), age)
            try:  # compare-and-swap: of two builds taking over one stale lease, one wins
                self._etag = self._put(client, IfMatch=obj["ETag"])
            except ClientError:
                raise LeaseError(_describe(holder, self.storage.uri)) from None
        self._thread = threading.Thread(target=self._renew, args=(client,), name="lease renewal", daemon=True)
        self._thread.start()

    def _renew(self, client) -> None:  # noqa: ANN001
        while not self._stop.wait(self.renew_s):
            try:
                self._etag = self._put(client, IfMatch=self._etag or "*")
            except Exception as exc:  # noqa: BLE001 (a lost lease is logged; the build itself carries on)
                log.error("%s: could not renew the build's lease (%s)", self.storage.uri, exc)

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            client = self.storage.s3_client()
            bucket, key = self._key()
            with contextlib.suppress(Exception):  # only our own lease: a taken-over one has another ETag
                head = client.head_object(Bucket=bucket, Key=key)
                if head.get("ETag") == self._etag:
                    client.delete_object(Bucket=bucket, Key=key)
