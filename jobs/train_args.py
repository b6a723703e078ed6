"""Arguments of ``parley train`` / ``evaluate`` / ``render`` (light: no torch import)."""

from __future__ import annotations

import argparse

PRESETS = ("cpu", "debug", "paper")
"""Names of :data:`nerf.presets.PRESETS` (kept here so `parley --help` does not import torch; a test checks)."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", "-d", required=True, help="dataset root (directory or s3://...)")
    p.add_argument("--identity", required=True, help="identity to train")
    p.add_argument("--output", "-o", required=True, help="run directory (checkpoint, log, evaluation); resumed")
    p.add_argument("--preset", choices=PRESETS, default="cpu", help="training recipe")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps")
    p.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of the identity")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, help="checkpoint.pt of a run")
    p.add_argument("--dataset", "-d", required=True, help="the dataset it was trained on")
    p.add_argument("--output", "-o", required=True, help="directory for eval.json and the side-by-side video")
    p.add_argument("--device", default="cpu")
    p.add_argument("--s3-endpoint", default=None)


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, help="checkpoint.pt of a trained run")
    p.add_argument("--audio", "-a", required=True, help="driving audio (wav, mp3, mp4, ...)")
    p.add_argument("--out", "-o", required=True, help="output mp4")
    p.add_argument("--size", type=int, default=None, help="output side in pixels (default: the training size)")
    p.add_argument("--device", default="cpu")
