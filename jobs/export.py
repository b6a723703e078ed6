"""``parley export``: one identity of a dataset in another tool's on-disk layout."""

from __future__ import annotations

import argparse
import sys


def run_cli(args: argparse.Namespace) -> int:
    """``parley export radnerf`` entry: returns the process exit code."""
    from pipelines.export import export_conversation, export_radnerf
    from pipelines.storage import S3Options
    from workers.errors import ParleyError

    s3 = S3Options(endpoint_url=args.s3_endpoint)
    try:
        if args.conversation:
            reports = export_conversation(args.dataset, args.conversation, args.output, overwrite=args.overwrite,
                                          s3=s3)
        else:
            reports = [export_radnerf(args.dataset, args.identity, args.output, overwrite=args.overwrite, s3=s3)]
    except (KeyError, ParleyError, FileExistsError, ValueError) as exc:
        print(f"export: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    for report in reports:
        print(f"exported {report.identity}: {report.n_frames} frames ({report.n_train} train, {report.n_val} val; "
              f"{report.n_skipped} without a face skipped) from {len(report.clips)} clip(s) to {report.output}")
    return 0
