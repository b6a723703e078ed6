"""The `parley` command line. Each subcommand parses its arguments and calls a library `main`."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="parley", description="Talking and listening NeRF avatars.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="per-frame features of clips on this machine (no Ray)")
    ex.add_argument("clips", nargs="+", help="clip files (any container ffmpeg reads)")
    ex.add_argument("--output", "-o", required=True, help="output directory")
    ex.add_argument("--backend", choices=["mediapipe", "fan"], default="mediapipe", help="landmark backend")
    ex.add_argument("--max-people", type=int, default=1, help="people kept per clip (2 for conversations)")
    ex.add_argument("--crop-size", type=int, default=512, help="side of the stored person crop (px)")
    ex.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command == "extract":
        from jobs.extract import run_cli

        return run_cli(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
