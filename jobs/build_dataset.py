"""``parley build-dataset``: the thin CLI over :func:`pipelines.build.build`.

Runs the same on a laptop (a local Ray cluster is started) and on a cluster
(``ray job submit -- parley build-dataset ...``, which sets ``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI parser imports this module: keep it light (no torch / cv2 at import)
    from pipelines.build_config import BuildConfig, BuildReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``build-dataset``."""
    p.add_argument("--input", "-i", action="append", required=True, metavar="DIR|GLOB|s3://...|MANIFEST.csv",
                   help="clips to build (repeatable): a directory, a glob, an S3 prefix, or a manifest CSV "
                        "with source_uri,identity[,role]")
    p.add_argument("--output", "-o", required=True, metavar="DIR|s3://bucket/prefix", help="dataset root")
    g = p.add_argument_group("resources (defaults use the whole cluster)")
    g.add_argument("--num-workers", type=int, default=None, help="concurrent clip workers")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (fractions allowed)")
    g.add_argument("--memory-per-worker-gb", type=float, default=2.0, help="memory reserved per worker")
    g.add_argument("--batch-size", type=int, default=1, help="clips per worker call")
    g.add_argument("--stall-timeout", type=float, default=120.0, metavar="S",
                   help="a clip whose next frame takes longer than S seconds fails as stalled (default 120)")
    g.add_argument("--clip-timeout", type=float, default=600.0, metavar="S",
                   help="a clip's deadline: S seconds plus --clip-timeout-per-frame per frame (default 600)")
    g.add_argument("--clip-timeout-per-frame", type=float, default=0.5, metavar="S",
                   help="seconds a clip's deadline grows per frame (default 0.5)")
    g.add_argument("--max-attempts", type=int, default=2,
                   help="worker deaths (out of memory, a crash) one clip may cause before it fails (default 2)")
    g.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS, else local)")
    e = p.add_argument_group("extraction")
    e.add_argument("--backend", choices=["mediapipe", "fan"], default="mediapipe", help="landmark backend")
    e.add_argument("--max-people", type=int, default=2,
                   help="most people kept per clip (default 2: a conversation; a manifest naming a clip's people "
                        "as a|b keeps that many)")
    e.add_argument("--roles", default=None, metavar="ROLES.csv",
                   help="hand-checked speakers: source_uri,start_s,end_s,speaker (a person's name, p<k> or none)")
    e.add_argument("--crop-size", type=int, default=512, help="side of the stored person crop (px)")
    e.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each clip (trials)")
    r = p.add_argument_group("re-runs")
    r.add_argument("--retry-failed", action="store_true", help="also rebuild clips whose input was bad")
    r.add_argument("--force", action="store_true", help="rebuild every listed clip")
    r.add_argument("--strict", action="store_true", help="exit non-zero when any clip failed")
    r.add_argument("--no-qc", action="store_true", help="skip the per-identity QC report")
    p.add_argument("--s3-endpoint", default=None,
                   help="S3-compatible endpoint URL (default: PARLEY_S3_ENDPOINT / AWS_ENDPOINT_URL)")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The build configuration from parsed CLI arguments."""
    from pipelines.build_config import BuildConfig, Resources
    from pipelines.storage import S3Options
    from workers.config import ClipConfig

    clip = ClipConfig(backend=args.backend, max_people=args.max_people, crop_size=args.crop_size,
                      max_frames=args.max_frames)
    resources = Resources(num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
                          memory_per_worker_gb=args.memory_per_worker_gb, batch_size=args.batch_size,
                          stall_timeout_s=args.stall_timeout, clip_timeout_s=args.clip_timeout,
                          clip_timeout_per_frame_s=args.clip_timeout_per_frame, max_attempts=args.max_attempts)
    return BuildConfig(inputs=args.input, output=args.output, clip=clip, resources=resources,
                       s3=S3Options(endpoint_url=args.s3_endpoint), roles=args.roles, retry_failed=args.retry_failed,
                       force=args.force, qc=not args.no_qc, ray_address=args.ray_address)


def summary_lines(report: BuildReport) -> list[str]:
    """The end-of-build summary."""
    fps = report.frames / max(report.seconds, 1e-9)
    if not report.built:
        head = (f"nothing to build: {report.skipped} already built (skipped) of {report.listed} listed clip(s); "
                f"{report.seconds:.1f} s")
    else:
        head = (f"built {len(report.built)} of {report.listed} listed clip(s) in {report.seconds:.1f} s: "
                f"{len(report.ok)} ok, {len(report.failed)} failed, {report.skipped} already built (skipped); "
                f"{report.frames} frames, {fps:.1f} frames/s")
    lines = [
        head,
        f"listed clips in the dataset: {report.ok_total} ok, {report.failed_total} failed",
        f"dataset: {report.output} ({len(report.identities)} identities; clips/ frames/ identities/ qc/)",
    ]
    lines += [f"  FAILED {r['source_uri']}: {r['error']}"
              + (" (the rows of its last good build are kept)" if r.get("kept_previous") else "")
              for r in report.failed]
    return lines


def run_cli(args: argparse.Namespace) -> int:
    """``parley build-dataset`` entry: returns the process exit code."""
    from pipelines.build import build
    from workers.errors import ParleyError

    config = config_from_args(args)
    start = time.perf_counter()
    done = [0]

    def progress(row: dict[str, Any]) -> None:
        done[0] += 1
        who = "person" if row["n_people"] == 1 else "people"
        what = (f"{row['n_frames']} frames, {row['n_people']} {who}" if row["status"] == "ok"
                else f"{row['error_kind']} error: {row['error']}")
        print(f"[{done[0]}] {row['status']:6s} {row['source_uri']} ({what}; {row['total_s']:.1f} s; "
              f"{time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)

    try:
        report = build(config, on_row=progress)
    except ParleyError as exc:
        print(f"build-dataset: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    if report.listed and not report.ok_total:
        print("build-dataset: every clip failed", file=sys.stderr)
        return 1
    if args.strict and report.failed_total:
        print(f"build-dataset: {report.failed_total} clip(s) failed (--strict)", file=sys.stderr)
        return 1
    return 0
