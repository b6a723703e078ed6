"""What a dataset build is asked to do and what it reports: inputs, output, settings, resources, outcome.

Kept apart from the Ray plan (:mod:`pipelines.build`) and the clip worker (:mod:`pipelines.build_worker`), which
both read it; the CLI (:mod:`jobs.build_dataset`) fills it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.storage import S3Options
from workers.config import ClipConfig


@dataclass
class Resources:
    """Every resource setting of the build, in one place. Defaults use the whole cluster."""

    num_workers: int | None = None
    """Concurrent clip workers (default: the cluster's CPUs // ``cpus_per_worker``, at most one per clip)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; torch/OpenCV threads follow (at least 1)."""
    memory_per_worker_gb: float = 2.0
    """Memory reserved per worker for scheduling (a worker peaks near 1.3 GB on 512 px crops)."""
    batch_size: int = 1
    """Clips per worker call."""
    stall_timeout_s: float = 120.0
    """A clip whose next frame takes longer than this (decode and per-frame work) fails as stalled."""
    clip_timeout_s: float = 600.0
    """A clip's deadline before its length is added (:attr:`clip_timeout_per_frame_s`)."""
    clip_timeout_per_frame_s: float = 0.5
    """Seconds the deadline grows per frame of the clip (a worker extracts ~15-80 frames/s per core)."""
    max_attempts: int = 2
    """Times a clip may kill its worker process (out of memory, a native crash) before it gets a failed row."""

    def threads(self) -> int:
        """torch / OpenCV threads of one worker."""
        return max(1, int(round(self.cpus_per_worker)))


@dataclass
class BuildConfig:
    """What ``parley build-dataset`` does."""

    inputs: list[str]
    """Directories, globs, ``s3://`` prefixes or manifest CSVs."""
    output: str
    """Dataset root (local directory or ``s3://bucket/prefix``)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    resources: Resources = field(default_factory=Resources)
    s3: S3Options = field(default_factory=S3Options)
    roles: str | None = None
    """A roles CSV of hand-checked speakers (:func:`pipelines.inputs.read_role_overrides`)."""
    retry_failed: bool = False
    """Also rebuild clips that failed because of their input."""
    force: bool = False
    """Rebuild every listed clip."""
    qc: bool = True
    """Write the QC report of every identity that changed."""
    ray_address: str | None = None
    """Ray cluster to use (default: ``RAY_ADDRESS``, a running local cluster, or a new one)."""


@dataclass
class BuildReport:
    """Outcome of a build."""

    output: str
    listed: int = 0
    skipped: int = 0
    built: list[dict[str, Any]] = field(default_factory=list)
    """Status rows of the clips built in this run."""
    identities: list[str] = field(default_factory=list)
    qc_written: list[str] = field(default_factory=list)
    ok_total: int = 0
    """Listed clips whose row is ``ok`` after the build (built now or before)."""
    failed_total: int = 0
    """Listed clips whose row is ``failed`` after the build."""
    seconds: float = 0.0

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.built if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.built if r["status"] != "ok"]

    @property
    def frames(self) -> int:
        return int(sum(r["n_frames"] or 0 for r in self.ok))

