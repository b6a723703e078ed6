"""The `parley` command line. Each subcommand parses its arguments and calls a library `main`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="parley", description="Talking and listening NeRF avatars.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="per-frame features of clips on this machine (no Ray)")
    ex.add_argument("clips", nargs="+", help="clip files (any container ffmpeg reads)")
    ex.add_argument("--output", "-o", required=True, help="output directory")
    ex.add_argument("--backend", choices=["mediapipe", "fan"], default="mediapipe", help="landmark backend")
    ex.add_argument("--max-people", type=int, default=2, help="most people kept per clip (default 2: a conversation)")
    ex.add_argument("--crop-size", type=int, default=512, help="side of the stored person crop (px)")
    ex.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads")

    bd = sub.add_parser("build-dataset", help="build a dataset from many clips on Ray (local or S3; resumable)")
    from jobs.build_dataset import add_arguments

    add_arguments(bd)

    dsp = sub.add_parser("dataset", help="look after a dataset: check (and repair) its consistency")
    ds_sub = dsp.add_subparsers(dest="dataset_command", required=True)
    from jobs.dataset_check import add_arguments as add_check_arguments

    add_check_arguments(ds_sub.add_parser("check", help="orphans, rows without files, schema, counts (--fix)"))
    from jobs.dataset_check import add_conversations_arguments

    add_conversations_arguments(ds_sub.add_parser("conversations", help="the two-person clips: ids, people, turns"))

    exp = sub.add_parser("export", help="write one identity in another tool's layout")
    exp_sub = exp.add_subparsers(dest="format", required=True)
    rad = exp_sub.add_parser("radnerf", help="RAD-NeRF / ER-NeRF layout (transforms_*.json, ori_imgs/, aud.npy ...)")
    rad.add_argument("--dataset", "-d", required=True, help="dataset root (directory or s3://...)")
    who = rad.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="identity to export")
    who.add_argument("--conversation", metavar="ID",
                     help="both people of a conversation (from its clip), OUTPUT/<identity>/ each, and "
                          "OUTPUT/conversation.json with the speaker segments")
    rad.add_argument("--output", "-o", required=True, help="output directory")
    rad.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    rad.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")

    # The avatar commands import torch only when they run (keeps `parley --help` fast).
    from jobs import train_args

    tr = sub.add_parser("train", help="train avatars (head -> lips -> torso): every identity on Ray, or one locally",
                        description=train_args.TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_args.add_train_arguments(tr)
    sw = sub.add_parser("sweep", help="a hyperparameter sweep x identities on Ray Tune (ASHA), tracked in MLflow")
    train_args.add_sweep_arguments(sw)
    rg = sub.add_parser("registry", help="registered avatars: list, show, promote the champion")
    train_args.add_registry_arguments(rg)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on its identity's held-out frames")
    train_args.add_evaluate_arguments(ev)
    rn = sub.add_parser("render", help="render a trained avatar speaking an audio file (mp4 with sound)")
    train_args.add_render_arguments(rn)
    rd = sub.add_parser("render-dialogue", help="render a conversation of a dialogue model from one audio file (both "
                        "people side by side, head motion generated, mp4 with sound)")
    train_args.add_render_dialogue_arguments(rd)
    ta = sub.add_parser("train-audio", help="train the dataset-wide audio-lip models and the lip-sync scorer on Ray "
                        "Train, tracked in MLflow and registered (audio-lip, lip-sync-scorer)")
    train_args.add_train_audio_arguments(ta)
    ss = sub.add_parser("sync-score", help="lip-sync score of a video: last line lse_c=<x> lse_d=<x> offset=<frames>")
    train_args.add_sync_score_arguments(ss)
    return parser


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM (``kill``, ``ray job stop``, a scheduler's preemption) unwinds like Ctrl-C instead
    of ending the process on the spot, so ``with`` blocks clean up: a video being written is deleted, not left as
    a ``.partial`` file; a dataset's lease is released. The previous handler is restored after."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with _exit_on_sigterm():
        return _run(parser, args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command in ("train", "sweep"):
        local = args.command == "train" and args.output is not None
        if local and args.resume:
            parser.error("--resume NAME resumes a Ray fan-out; a local run (--output DIR) resumes from DIR by itself")
        if not args.resume:
            missing = [flag for flag, value in (("--dataset", args.dataset), ("--space", getattr(args, "space", 1)))
                       if not value]
            if missing:
                parser.error(f"the following arguments are required: {', '.join(missing)} (unless --resume NAME)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command == "extract":
        from jobs.extract import run_cli

        return run_cli(args)
    if args.command == "build-dataset":
        from jobs.build_dataset import run_cli as build_cli

        return build_cli(args)
    if args.command == "train" and args.output is None or args.command == "sweep":
        from jobs import fanout

        return fanout.run_train_cli(args) if args.command == "train" else fanout.run_sweep_cli(args)
    if args.command == "registry":
        from jobs.registry_cli import run_cli as registry_cli

        return registry_cli(args)
    if args.command == "render":
        from jobs.render import run_render_cli

        return run_render_cli(args)
    if args.command == "render-dialogue":
        from jobs.render_dialogue import run_cli as render_dialogue_cli

        return render_dialogue_cli(args)
    if args.command in ("train", "evaluate"):
        from jobs import train as train_job

        return train_job.run_train_cli(args) if args.command == "train" else train_job.run_evaluate_cli(args)
    if args.command == "train-audio":
        from jobs.train_audio import run_cli as train_audio_cli

        return train_audio_cli(args)
    if args.command == "sync-score":
        from jobs.sync_score import run_cli as sync_score_cli

        return sync_score_cli(args)
    if args.command == "dataset":
        from jobs.dataset_check import run_cli as check_cli
        from jobs.dataset_check import run_conversations_cli

        return check_cli(args) if args.dataset_command == "check" else run_conversations_cli(args)
    if args.command == "export":
        from jobs.export import run_cli as export_cli

        return export_cli(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
