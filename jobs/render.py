"""``parley render``: an avatar speaking an audio file, as an mp4 with the audio muxed in (no Ray, no MLflow
unless the model comes from the registry)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jobs.errors import fail
from jobs.train_args import MAX_RENDER_SECONDS
from nerf.avatar import AudioError, Avatar
from nerf.checkpoint import CheckpointError, require_method
from workers.errors import ClipError

if TYPE_CHECKING:
    from workers.audio import FrameAudio

log = logging.getLogger(__name__)
T = TypeVar("T")


def render_audio(checkpoint: str | Path, audio: str | Path, out: str | Path, size: int | None = None,
                 fps: float = 25.0, device: str = "cpu", progress: bool = False,
                 max_seconds: float | None = MAX_RENDER_SECONDS, method: str | None = None,
                 expression: str | Path | None = None, poses_from: str = "expression") -> dict[str, Any]:
    """Render an avatar speaking an audio file: an mp4 with the audio muxed in.

    Audio features are computed exactly as in the dataset build (:func:`workers.audio.frame_features`),
    one video frame per ``1 / fps`` s of audio; head pose and blinks walk the training frames back and forth.
    The output path and the audio's length are checked before anything is rendered.

    Args:
        max_seconds: longest audio accepted (None: no limit).
        method: the method the checkpoint must be of (None: whichever it names).
        expression: a video of the avatar's person whose expression drives the render (a method that takes one:
            JEAN); its frames are matched to the audio's by time, and a source shorter than the audio plays back
            and forth (:meth:`jobs.expression_source.ExpressionSource.frames_for`).
        poses_from: with ``expression``, the head poses and eye openness of ``expression`` (the source video) or
            ``training`` (the training frames walked back and forth, as without a source).

    Returns:
        ``video``, ``frames``, ``seconds``, ``fps`` (rendered frames per second); with ``expression``, also
        ``expression_frames`` and ``person_distance`` (:meth:`jobs.expression_source.ExpressionSource.person_distance`).

    Raises:
        CheckpointError: see :func:`nerf.checkpoint.load_checkpoint`; ClipError: the file has no decodable audio;
        AudioError: the audio has no samples, or is longer than ``max_seconds``; ValueError: ``out`` is a
        directory or its folder cannot be created.
    """
    from workers.video_writer import VideoWriter

    out = output_path(out)
    avatar = Avatar.from_checkpoint(checkpoint, device)
    require_method(checkpoint, avatar.method, method)
    if avatar.model.several_people:
        raise ValueError(f"{checkpoint}: a {avatar.method} model of {len(avatar.people)} people renders "
                         "conversations: use `parley render-dialogue`")
    sound = driving_audio(audio, fps, max_seconds)
    n, feats = sound.mel.shape[0], sound.mel
    size = even_size(size or int(avatar.kit["size"]))
    drive, info = expression_drive(avatar, expression, n, fps, poses_from) if expression else ({}, {})
    t0 = time.perf_counter()
    with VideoWriter(out, fps=fps, size=(size, size), audio=audio) as video:
        for frame in progress_of(avatar.render(feats, size=size, **drive), n, progress):
            video.write(frame)
    secs = time.perf_counter() - t0
    return {"video": str(out), "frames": n, "seconds": secs, "fps": n / secs if secs else float("inf"), **info}


def output_path(out: str | Path) -> Path:
    """The mp4 to write, its folder created.

    Raises:
        ValueError: ``out`` is a directory, or its folder cannot be created.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give the mp4 file to write (e.g. {out / 'speech.mp4'})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create its folder ({exc.strerror})") from exc
    return out


def driving_audio(audio: str | Path, fps: float, max_seconds: float | None) -> FrameAudio:
    """The per-frame features of an audio file, one video frame per ``1 / fps`` s, computed as the dataset build
    computes them (:func:`workers.audio.frame_features`).

    Raises:
        ClipError: no decodable audio; AudioError: no samples, or longer than ``max_seconds``.
    """
    from workers.audio import frame_features
    from workers.audio_decode import read_audio
    from workers.config import AudioFeatureConfig

    acfg = AudioFeatureConfig()
    samples = read_audio(audio, acfg.sample_rate)
    if samples.size == 0:
        raise AudioError(f"{audio}: the audio stream has no samples; nothing to render")
    if max_seconds is not None and samples.size / acfg.sample_rate > max_seconds:
        raise AudioError(f"{audio}: {samples.size / acfg.sample_rate:.0f} s of audio, more than the "
                         f"{max_seconds:.0f} s limit (--max-seconds); cut it or raise the limit")
    n = int(math.ceil(samples.size / acfg.sample_rate * fps))
    return frame_features(samples, n, fps, acfg)


def even_size(size: int) -> int:
    """Raises ValueError for an odd side (H.264 needs even ones)."""
    if size % 2:
        raise ValueError(f"size must be even for H.264 video, got {size}")
    return size


def progress_of(frames: Iterable[T], n: int, progress: bool) -> Iterator[T]:
    """``frames`` passed through, with a progress line on stderr when ``progress``: on a terminal one line updated
    every second; in a log (ray job logs, CI) a line every 10 s."""
    tty = sys.stderr.isatty()
    every, start, end = (1.0, "\r", "") if tty else (10.0, "", "\n")
    t0 = last = time.perf_counter()
    for k, frame in enumerate(frames):
        yield frame
        done = k + 1
        if progress and (time.perf_counter() - last > every or done == n):
            last = time.perf_counter()
            rate = done / (last - t0)
            print(f"{start}render {done}/{n} frames ({rate:.1f} frames/s, "
                  f"{(n - done) / rate:.0f} s left)", end=end, file=sys.stderr, flush=True)
    if progress and tty:
        print(file=sys.stderr)


def expression_drive(avatar: Avatar, expression: str | Path, n: int, fps: float,
                     poses_from: str = "expression") -> tuple[dict[str, Any], dict[str, Any]]:
    """:meth:`nerf.avatar.Avatar.render` arguments for ``n`` frames driven by an expression video, and what to
    report of it. Warns (log) when the video seems to show another person than the avatar's.

    Raises:
        ValueError: the method takes no expression source, or ``poses_from`` is unknown; ClipError: the video
        cannot be read or shows no face.
    """
    import numpy as np
    import torch

    from jobs.expression_source import OTHER_PERSON, read_expression_source

    if "expression_features" not in avatar.model.extra_inputs:
        raise ValueError(f"--expression: the {avatar.method} method takes no expression source (jean does)")
    if poses_from not in ("expression", "training"):
        raise ValueError(f"--poses-from {poses_from!r}: expression or training")
    src = read_expression_source(expression, str(avatar.config.model.features))
    coeffs = avatar.kit.get("identity_coeffs")
    dist = src.person_distance(None if coeffs is None else coeffs.numpy())
    if dist > OTHER_PERSON:
        log.warning("%s: the face looks like another person than the avatar's %s (identity distance %.2f > %.2f); "
                    "JEAN moves one person's face by their own expressions, so another's may render wrongly",
                    expression, avatar.identity, dist, OTHER_PERSON)
    idx = src.frames_for(n, fps)
    codes = avatar.model.driving_inputs({"expression_features": src.features})
    drive: dict[str, Any] = {"extra": {k: v[torch.from_numpy(idx)] for k, v in codes.items()}}
    if poses_from == "expression":
        drive["poses"], drive["eye"] = src.poses[idx], src.eye[idx]
    return drive, {"expression_frames": len(src), "person_distance": dist,
                   "expression_loops": bool(n and int(np.round((n - 1) / fps * src.fps)) >= len(src))}


def run_render_cli(args: argparse.Namespace) -> int:
    """``parley render``: a checkpoint file (``--checkpoint``) or a registered version's (``--model``)."""
    from jobs.registry_cli import registered_checkpoint

    try:
        with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
            checkpoint = registered_checkpoint("render", args, tmp) if args.model else args.checkpoint
            r = render_audio(checkpoint, args.audio, args.out, size=args.size, device=args.device, progress=True,
                             max_seconds=args.max_seconds if args.max_seconds > 0 else None, method=args.method,
                             expression=args.expression, poses_from=args.poses_from)
    except (CheckpointError, ClipError, AudioError, ValueError, LookupError, RuntimeError) as exc:
        return fail("render", exc)
    if "expression_frames" in r:
        print(f"expression from {args.expression}: {r['expression_frames']} frames"
              + (" (shorter than the audio: played back and forth)" if r["expression_loops"] else ""))
    print(f"rendered {r['frames']} frames in {r['seconds']:.1f} s ({r['fps']:.1f} frames/s) -> {r['video']}")
    return 0
