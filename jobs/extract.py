"""Per-clip extraction on one machine, without Ray: clips in, Parquet rows and QC sheets out.

The Ray Data build (many clips, S3, resume) reuses the same worker; this job is the small, local
path that the demo and users checking a few clips take.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines import qc
from pipelines.commit import write_clip, write_failure
from pipelines.layout import safe_identity
from pipelines.storage import Storage
from workers.clip import ClipConfig, ClipProcessor, clip_id_for
from workers.errors import ParleyError

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """What ``parley extract`` does."""

    clips: list[str]
    """Local clip paths."""
    output: str
    """Output directory: ``clips/``, ``frames/identity=<id>/``, ``qc/``."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    """Per-clip extraction settings."""
    threads: int | None = None
    """CPU threads for torch / OpenCV (None: library defaults)."""


@dataclass
class ExtractReport:
    """Outcome of an extraction."""

    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def main(config: ExtractConfig) -> ExtractReport:
    """Extract every clip; a clip that fails is recorded in ``clips/`` with its reason.

    Returns:
        What was built and what failed.
    """
    _set_threads(config.threads)
    out = Path(config.output)
    storage = Storage(out)
    (out / "qc").mkdir(parents=True, exist_ok=True)
    report = ExtractReport()
    start = time.perf_counter()
    processor = ClipProcessor(config.clip)
    try:
        for path in config.clips:
            cid = clip_id_for(path)
            identity = safe_identity(Path(path).stem)
            t = time.perf_counter()
            try:
                result = processor(path, identity=identity, clip_id=cid)
            except ParleyError as exc:
                reason = getattr(exc, "reason", str(exc))
                log.warning("%s: failed: %s", path, reason)
                report.failed[path] = reason
                write_failure(storage, clip_id=cid, source_uri=path, identity=identity, role=None, error=reason,
                                error_kind="input", extra={"total_s": time.perf_counter() - t})
                continue
            write_clip(storage, result, identity=identity)
            by_identity: dict[str, list[dict]] = {}
            for row in result.rows:
                by_identity.setdefault(row["identity"], []).append(row)
            for ident, rows in by_identity.items():
                qc.write_png(str(out / "qc" / f"{ident}__{cid}.png"), qc.contact_sheet(rows))
            report.ok.append(path)
            report.frames += result.summary["n_frames"]
            log.info("%s: %d frames, %d people, %.1f s", path, result.summary["n_frames"],
                     result.summary["n_people"], result.summary["total_s"])
    finally:
        processor.close()
    report.seconds = time.perf_counter() - start
    return report


def run_cli(args) -> int:
    """``parley extract`` entry: returns the process exit code."""
    clip_cfg = replace(ClipConfig(), backend=args.backend, max_people=args.max_people, crop_size=args.crop_size)
    report = main(ExtractConfig(clips=args.clips, output=args.output, clip=clip_cfg, threads=args.threads))
    print(f"extracted {len(report.ok)} clip(s), {report.frames} frames in {report.seconds:.1f} s "
          f"({report.frames / max(report.seconds, 1e-9):.1f} frames/s); failed: {len(report.failed)}")
    for path, reason in report.failed.items():
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    print(f"output: {Path(args.output).resolve()} (frames/ clips/ qc/)")
    return 0 if report.ok or not report.failed else 1
