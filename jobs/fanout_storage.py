"""Where a fan-out keeps its Tune state: the storage path and filesystem, and the record of what it started with
(:data:`RECORD`), which ``--resume`` reads back."""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from jobs.fanout_config import FanoutError, FanoutJob

RECORD = "parley-fanout.json"
"""What a fan-out started with (job, kind, identities, tracking store and experiment, parent run), written into
its Tune experiment directory before the trials start; ``--resume`` reads it back."""
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph",
                       "beegfs", "gpfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs")
"""Mount types whose directories every node of a cluster sees (``/proc/mounts``): a Tune storage path on one is
accepted on a multi-machine cluster."""


def tune_storage(job: FanoutJob) -> str:
    """The Tune storage a fan-out uses: ``--storage``, else ``RAY_STORAGE``, else Ray's ``~/ray_results``."""
    return job.storage or os.environ.get("RAY_STORAGE") or str(Path("~/ray_results").expanduser())


def storage_location(job: FanoutJob) -> tuple[str, Any]:
    """Tune's ``storage_path`` and ``storage_filesystem`` (None: the local one)."""
    from pipelines.storage import S3Options, _s3_filesystem, is_s3, split_s3

    where = tune_storage(job)
    if is_s3(where):
        bucket, key = split_s3(where)
        return f"{bucket}/{key}".rstrip("/"), _s3_filesystem(S3Options(endpoint_url=job.s3_endpoint))
    if "://" in where:
        raise FanoutError(f"--storage {where}: expected a local directory or s3://bucket/prefix")
    return str(Path(where).expanduser().resolve()), None


def experiment_fs(job: FanoutJob) -> tuple[Any, str]:
    """A pyarrow filesystem and the storage root in it (where Tune puts the experiment directories)."""
    import pyarrow.fs as pafs

    root, fs = storage_location(job)
    return fs or pafs.LocalFileSystem(), root


def write_record(job: FanoutJob, record: dict[str, Any]) -> None:
    fs, root = experiment_fs(job)
    folder = f"{root}/{record['tune_name']}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{RECORD}") as f:
        f.write(json.dumps(record, indent=1, default=str).encode())


def stored_experiments(job: FanoutJob) -> list[str]:
    """The fan-outs in a job's Tune storage (directories holding a :data:`RECORD`), sorted."""
    import pyarrow.fs as pafs

    fs, root = experiment_fs(job)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    dirs = [i for i in found if i.type == pafs.FileType.Directory]
    records = fs.get_file_info([f"{d.path}/{RECORD}" for d in dirs]) if dirs else []
    return sorted(d.base_name for d, r in zip(dirs, records, strict=True) if r.type == pafs.FileType.File)


def read_record(job: FanoutJob, name: str) -> dict[str, Any]:
    """What the fan-out ``name`` in the job's storage started with (see :data:`RECORD`).

    Raises:
        FanoutError: no such fan-out there (the ones there are named).
    """
    import pyarrow.fs as pafs

    fs, root = experiment_fs(job)
    path = f"{root}/{name}/{RECORD}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        there = stored_experiments(job)
        raise FanoutError(f"--resume {name}: no fan-out {name!r} in the Tune storage {tune_storage(job)} "
                          f"(fan-outs there: {', '.join(there) if there else 'none'}); pass the --storage it ran with")
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def resumed_job(job: FanoutJob, record: dict[str, Any]) -> FanoutJob:
    """The recorded job with this invocation's placement (storage, endpoints, Ray address, scratch, registering).

    Raises:
        FanoutError: a ``--dataset`` other than the one the fan-out trained on.
    """
    from pipelines.storage import S3Options, Storage

    known = {f.name for f in fields(FanoutJob)}
    old = FanoutJob(**{k: v for k, v in record["job"].items() if k in known})
    s3 = job.s3_endpoint or old.s3_endpoint
    name = str(record["tune_name"])
    if job.dataset and Storage(job.dataset, S3Options(endpoint_url=s3)).uri != old.dataset:
        raise FanoutError(f"--resume {name}: it trained on {old.dataset}, not {job.dataset} (leave --dataset out)")
    return replace(old, name=name, storage=job.storage, s3_endpoint=s3, ray_address=job.ray_address,
                   work_root=job.work_root or old.work_root, register=job.register,
                   tracking_uri=job.tracking_uri or record["tracking_uri"])


def network_fs(path: str, mounts: str | None = None) -> bool:
    """Whether ``path`` lies on a network filesystem (:data:`NETWORK_FILESYSTEMS`), by ``/proc/mounts``."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return False
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].rstrip("/") or "/"
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind in NETWORK_FILESYSTEMS
