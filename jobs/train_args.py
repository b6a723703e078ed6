"""Arguments of ``parley train`` / ``sweep`` / ``evaluate`` / ``render`` / ``registry`` / ``train-audio`` /
``sync-score`` (light: no torch,
ray or mlflow import)."""

from __future__ import annotations

import argparse

MAX_RENDER_SECONDS = 600.0
"""Longest audio ``parley render`` takes by default (``--max-seconds``): 10 minutes is 15,000 frames, hours on a
CPU, and a mistaken input (a whole podcast) should be a clear error, not a job that runs until it is killed."""
METHOD_HELP = ("avatar method: radnerf (default), jean (audio code + expression code; needs the audio-lip "
               "champion) or dialogue (the two people of a conversation in one network: --identity/--identities "
               "name conversations, or identities joined by +); packages may add their own through the "
               "parley.methods entry point")
AUDIO_SOURCE_HELP = ("drive the avatar's audio with a registered audio-lip encoder (models:/audio-lip@champion; "
                     "`parley train-audio` trains it) instead of an audio net learnt from this identity alone")
PRESET_HELP = "training recipe of the method (radnerf: cpu (default), debug, paper)"


TRAIN_HELP = """Two modes:
  on Ray (default): one Tune trial per identity (--identities a,b or all), GPU per trial when the cluster
    has GPUs, tracked in MLflow and registered as avatar-<identity> (<method>-<identity> for --method other
    than radnerf; --method dialogue: one trial per conversation, or per set of identities joined by +);
  local (--output DIR): one identity (--identity) on this machine, no Ray or MLflow."""


def add_fanout_arguments(p: argparse.ArgumentParser, local: bool) -> None:
    """Arguments of the Ray fan-out (``train`` without --output, and ``sweep``)."""
    if not local:
        p.add_argument("--dataset", "-d", default=None, help="dataset root (directory or s3://...); required "
                       "unless --resume")
        p.add_argument("--method", default=None, help=METHOD_HELP)
        p.add_argument("--preset", default=None, help=PRESET_HELP)
        p.add_argument("--steps-scale", type=float, default=None, help="multiply every stage's steps")
        p.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of each identity")
        p.add_argument("--audio-source", default=None, metavar="MODEL_URI", help=AUDIO_SOURCE_HELP)
        p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="set a training-config field by dotted key (model.features=crop, trainer.head.steps=2000); "
                        "repeatable")
    p.add_argument("--identities", default="all", help="comma-separated identities, or all (default)")
    p.add_argument("--gpus-per-trial", type=float, default=1.0, help="GPUs per trial when the cluster has GPUs")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (also its torch threads)")
    p.add_argument("--memory-per-trial-gb", type=float, default=None,
                   help="host memory Ray reserves per trial, so a node runs no more trials than fit (default 4; 0: "
                        "reserve none)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a trial whose worker dies")
    p.add_argument("--storage", default=None,
                   help="Tune storage: local path or s3://bucket/prefix (default ~/ray_results; on a cluster of "
                        "several machines: s3://... or a network filesystem)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; on a "
                        "cluster of several machines or under `ray job submit`: http://... of an mlflow server)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default parley/<dataset name>)")
    p.add_argument("--name", default=None, help="Tune experiment name")
    p.add_argument("--resume", default=None, metavar="NAME",
                   help="resume the interrupted fan-out NAME from --storage with the settings it started with "
                        "(dataset, identities, preset, search space): finished trials are kept, the others continue "
                        "from their last checkpoint in their own MLflow runs")
    p.add_argument("--no-register", action="store_true", help="do not register the models")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--work-root", default=None, help="node-local scratch directory for trials")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", "-d", default=None, help="dataset root (directory or s3://...); required unless "
                   "--resume")
    p.add_argument("--identity", default=None, help="one identity (local mode; or the same as --identities X)")
    p.add_argument("--output", "-o", default=None,
                   help="local mode: run directory (checkpoint, log, evaluation); resumed")
    p.add_argument("--method", default=None, help=METHOD_HELP)
    p.add_argument("--preset", default=None, help=PRESET_HELP)
    p.add_argument("--device", default="cpu", help="local mode: torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--steps-scale", type=float, default=None, help="multiply every stage's steps")
    p.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of the identity")
    p.add_argument("--no-eval", action="store_true", help="local mode: skip the held-out evaluation")
    p.add_argument("--threads", type=int, default=None, help="local mode: torch threads")
    p.add_argument("--audio-source", default=None, metavar="MODEL_URI", help=AUDIO_SOURCE_HELP)
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    add_fanout_arguments(p, local=True)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=None, help="sweep YAML (search space, scheduler; see jobs/sweeps/); required "
                   "unless --resume")
    add_fanout_arguments(p, local=False)


def add_registry_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="registry_command", required=True)
    for name, helptext in (("list", "registered avatars with their aliases and the champion's metrics"),
                           ("show", "every version of one avatar with its metrics and aliases"),
                           ("promote", "move the champion alias (no arguments: best version of every avatar)")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
        if name == "show":
            q.add_argument("model", help="avatar-<identity> (or the identity, with --method for other methods)")
        if name == "promote":
            q.add_argument("--identity", default=None, help="only this identity")
            q.add_argument("--model", default=None, help="a dataset-wide model by name (audio-lip, lip-sync-scorer)")
            q.add_argument("--version", type=int, default=None, help="this version (with --identity or --model)")
            q.add_argument("--metric", default="psnr", help="held-out metric to rank by (default psnr)")
        if name in ("show", "promote"):
            q.add_argument("--method", default="radnerf", help="the method whose model an identity names "
                           "(default radnerf: avatar-<identity>)")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Which trained model a command reads: a checkpoint file or a registered version, and its method."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", "-c", help="checkpoint.pt of a trained run")
    src.add_argument("--model", "-m", help="a registered avatar: models:/avatar-<identity>@champion (or /<version>); "
                     "only its checkpoint's tensors are loaded, never code from the registry")
    p.add_argument("--tracking-uri", default=None,
                   help="with --model: MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--method", default=None, help="the method the model must be of (default: the one its checkpoint "
                   "names)")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    sync = p.add_mutually_exclusive_group()
    sync.add_argument("--sync-model", default=None, help="lip-sync scorer to score prediction and ground truth with "
                      "(default: models:/lip-sync-scorer@champion when one is registered; none: the sync metrics "
                      "are left out with a note)")
    sync.add_argument("--sync-checkpoint", default=None, help="a scorer file (sync_scorer.pt) instead")
    sync.add_argument("--no-sync", action="store_true", help="no lip-sync score")
    p.add_argument("--dataset", "-d", required=True, help="the dataset it was trained on")
    p.add_argument("--output", "-o", required=True, help="directory for eval.json and the side-by-side video")
    p.add_argument("--align-poses", action="store_true",
                   help="also align each held-out frame's head pose to its image and report psnr_aligned: how much "
                        "of the error is the tracked pose's (slower: ~60 steps per frame)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--s3-endpoint", default=None)


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    p.add_argument("--audio", "-a", required=True, help="driving audio (wav, mp3, mp4, ...)")
    p.add_argument("--out", "-o", required=True, help="output mp4")
    p.add_argument("--size", type=int, default=None, help="output side in pixels (default: the training size)")
    p.add_argument("--expression", default=None, metavar="VIDEO",
                   help="jean: a video of the same person whose expression (and head poses) drive the render; a "
                        "source shorter than the audio plays back and forth")
    p.add_argument("--poses-from", choices=["expression", "training"], default="expression",
                   help="with --expression: head poses and blinks from the source video (default) or the training "
                        "frames")
    p.add_argument("--max-seconds", type=float, default=MAX_RENDER_SECONDS,
                   help=f"longest audio accepted, checked before rendering (default {MAX_RENDER_SECONDS:g}; 0: no "
                        "limit)")
    p.add_argument("--device", default="cpu")


def add_render_dialogue_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)  # --model models:/dialogue-<conversation>@champion
    p.add_argument("--audio", "-a", required=True, help="the conversation's audio (wav, mp3, mp4, ...)")
    p.add_argument("--out", "-o", required=True, help="output mp4 (both people side by side)")
    p.add_argument("--script", default=None, metavar="CSV",
                   help="who speaks when: a CSV with header start,end,speaker (seconds; an identity of the model, or "
                        "none); default: the conversation's first speaker speaks throughout")
    p.add_argument("--listener-expression", default=None, metavar="VIDEO",
                   help="a video whose face's expression drives the listener instead of the generated one")
    p.add_argument("--size", type=int, default=None, help="each person's side in pixels (default: the training size)")
    p.add_argument("--seed", type=int, default=0, help="draws of the generated head motion")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the generated motion's random part (0: its most likely path, stiller)")
    p.add_argument("--max-seconds", type=float, default=MAX_RENDER_SECONDS,
                   help=f"longest audio accepted (default {MAX_RENDER_SECONDS:g}; 0: no limit)")
    p.add_argument("--device", default="cpu")


def add_train_audio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", "-d", required=True, help="dataset root (directory or s3://...)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default parley/<dataset name>)")
    p.add_argument("--exclude", action="append", default=[], metavar="IDENTITY",
                   help="leave an identity out of training (repeatable): the avatars the models will be measured on")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of clips held out for the metrics")
    p.add_argument("--preset", default="default", help="default, or tiny (seconds; for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=1, help="data-parallel Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="default: the cluster's CPUs shared out")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--storage", default=None, help="Ray Train storage (default ~/ray_results)")
    p.add_argument("--cache-dir", default=None, help="cache of the decoded frames (default ~/.cache/parley/audio_lip)")
    p.add_argument("--no-register", action="store_true", help="log the models but do not register them")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")


def add_sync_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="the video to score (any file ffmpeg reads, with a visible face)")
    p.add_argument("--audio", "-a", default=None, help="score against this audio instead of the video's own track")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", "-m", default=None,
                     help="a registered scorer (default models:/lip-sync-scorer@champion)")
    src.add_argument("--checkpoint", "-c", default=None, help="a scorer file (sync_scorer.pt) instead of the registry")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the score, distances and protocol here")
