"""``parley dataset check DATASET [--fix]``: the dataset's consistency, and its repair (:mod:`pipelines.check`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dataset check``."""
    p.add_argument("dataset", metavar="DIR|s3://bucket/prefix", help="dataset root")
    p.add_argument("--fix", action="store_true",
                   help="repair what is found: delete orphans and temporaries, move unreadable or damaged clip rows "
                        "aside (their clips are built again by the next build), rewrite identities/")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0 when the dataset is consistent (or was repaired), 1 when problems remain, 2 on bad input."""
    from jobs.errors import fail
    from pipelines.build import new_build_id
    from pipelines.check import check_dataset
    from pipelines.dataset import Dataset
    from pipelines.lease import Lease
    from pipelines.storage import S3Options, Storage
    from workers.errors import ParleyError

    out = Storage(args.dataset, S3Options(endpoint_url=args.s3_endpoint))
    try:
        Dataset(out).require()
    except FileNotFoundError as exc:
        return fail("dataset check", exc)
    try:
        if args.fix:
            with Lease(out, f"check-{new_build_id()}"):
                report = check_dataset(out, fix=True)
        else:
            report = check_dataset(out)
    except ParleyError as exc:
        print(f"dataset check: {exc}", file=sys.stderr)
        return 2
    c = report.counts
    print(f"{report.uri}: {c['clips_ok']} ok and {c['clips_failed']} failed clip(s), {c['identities']} "
          f"identit{'y' if c['identities'] == 1 else 'ies'}, {c['frame_files']} frame file(s), "
          f"{c['frame_rows']} committed frame row(s)")
    for p in report.problems:
        print(f"  {p.kind:<20} {p.path}: {p.detail}")
    for line in report.fixed:
        print(f"  fixed: {line}")
    if report.ok:
        print("consistent")
        return 0
    if args.fix:
        print(f"{len(report.problems)} problem(s) found and repaired")
        return 0
    print(f"{len(report.problems)} problem(s); `parley dataset check {args.dataset} --fix` repairs them")
    return 1


def add_conversations_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dataset conversations``."""
    p.add_argument("dataset", metavar="DIR|s3://bucket/prefix", help="dataset root")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")


def run_conversations_cli(args: argparse.Namespace) -> int:
    """``parley dataset conversations``: one line per two-person clip (its id, the people, who speaks how much)."""
    from jobs.errors import fail
    from pipelines.dataset import Dataset
    from pipelines.storage import S3Options

    try:
        rows = Dataset(args.dataset, S3Options(endpoint_url=args.s3_endpoint)).require().conversations().to_pylist()
    except (FileNotFoundError, ValueError, OSError) as exc:
        return fail("dataset conversations", exc)
    if not rows:
        print(f"{args.dataset}: no conversations (clips of exactly two people)", file=sys.stderr)
        return 0
    print(f"{'conversation':<32} {'left (a)':<24} {'right (b)':<24} {'frames':>6} {'turns':>5} speaking a / b")
    for r in rows:
        print(f"{r['conversation_id']:<32} {r['identity_a']:<24} {r['identity_b']:<24} {r['n_frames']:>6} "
              f"{sum(1 for s in r['segments'] if s['speaker']):>5} {r['speaking_share_a']:.0%} / "
              f"{r['speaking_share_b']:.0%}")
    return 0
