"""``parley sync-score VIDEO``: the lip-sync score (LSE-C, LSE-D, offset) of any mp4 with the project's scorer.

The scorer is the registry's ``lip-sync-scorer@champion`` (or ``--model``), downloaded as tensors only, or a local
``--checkpoint``. The last line printed is ``lse_c=<x> lse_d=<x> offset=<frames>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_SCORER = "models:/lip-sync-scorer@champion"
NO_SCORER = ("no lip-sync scorer is registered in {uri}: train one with `parley train-audio --dataset DATASET` "
             "(it registers lip-sync-scorer@champion), or give a scorer file with --checkpoint")


def load_registered_scorer(tracking_uri: str | None, model_uri: str = DEFAULT_SCORER):  # noqa: ANN201
    """The scorer of a registered version (and its version info); a clear error when there is none."""
    from jobs import tracking
    from jobs.registry import RegistryError, fetch_checkpoint
    from nerf.audio_lip.checkpoint import load_scorer

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path, info = fetch_checkpoint(uri, model_uri, tmp, reader=load_scorer)
        except RegistryError as exc:
            if model_uri == DEFAULT_SCORER and "no registered model" in str(exc) or "has no alias" in str(exc):
                raise RegistryError(NO_SCORER.format(uri=uri)) from None
            raise
        scorer, meta = load_scorer(path)
    return scorer, {"name": info.name, "version": info.version, "run_id": info.run_id, **meta}


def score_video(video: str | Path, scorer: Any, audio: str | Path | None = None,
                max_frames: int | None = None) -> dict[str, Any]:
    """Score one video (its own audio, or ``audio``) with a loaded scorer; the :class:`SyncScore` as a dict."""
    from nerf.audio_lip.scoring import PROTOCOL, sync_score
    from workers.mouth import video_sync_inputs

    inputs = video_sync_inputs(video, audio, max_frames=max_frames)
    score = sync_score(scorer, inputs.crops, inputs.mel, inputs.valid)
    return {**score.as_dict(), "line": score.line(), "protocol": PROTOCOL}


def run_cli(args: argparse.Namespace) -> int:
    from jobs import tracking
    from jobs.registry import RegistryError
    from nerf.audio_lip.checkpoint import AudioLipCheckpointError, load_scorer
    from nerf.audio_lip.scoring import SyncScoreError
    from nerf.checkpoint import CheckpointError
    from workers.errors import ParleyError

    try:
        if not Path(args.video).is_file():
            raise FileNotFoundError(f"{args.video}: no such file")
        if args.audio is not None and not Path(args.audio).is_file():
            raise FileNotFoundError(f"{args.audio}: no such file")
        if args.checkpoint:
            scorer, meta = load_scorer(args.checkpoint)
            source = args.checkpoint
        else:
            scorer, meta = load_registered_scorer(args.tracking_uri, args.model or DEFAULT_SCORER)
            source = f"{meta['name']} version {meta['version']}"
        print(f"sync-score: scorer {source}", file=sys.stderr)
        try:
            out = score_video(args.video, scorer, args.audio)
        except SyncScoreError as exc:
            raise SyncScoreError(f"{args.video}: {exc}") from None
    except (FileNotFoundError, RegistryError, tracking.TrackingError, AudioLipCheckpointError, CheckpointError,
            SyncScoreError, ParleyError, ValueError) as exc:
        print(f"sync-score: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "scorer": source}, indent=2))
    print(out["line"])
    return 0
