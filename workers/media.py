"""Probing and streaming decode of clips with ffmpeg: bounded memory, constant frame rate.

Audio decoding is in :mod:`workers.audio_decode`, the video writer in :mod:`workers.video_writer` (the ffmpeg
helpers they share in :mod:`workers.ffmpeg_tools`); their public names are also importable from here.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from workers.errors import ClipError
from workers.ffmpeg_tools import ffprobe, finite_float, last_line, require
from workers.watchdog import Watchdog

TARGET_FPS = 25.0


@dataclass(frozen=True)
class ClipInfo:
    """What ffprobe says about a clip."""

    path: str
    duration_s: float
    """Duration of the container (or the longest stream), seconds."""
    fps: float
    """Source frame rate (average)."""
    width: int
    """Displayed width in pixels (after rotation metadata)."""
    height: int
    """Displayed height in pixels (after rotation metadata)."""
    video_duration_s: float
    has_audio: bool
    sample_rate: int | None
    """Source audio sample rate, None without audio."""
    audio_duration_s: float | None
    video_codec: str




def _rate(value: str | None) -> float | None:
    if not value or value in ("0/0", "0"):
        return None
    try:
        r = float(Fraction(value))
    except (ValueError, ZeroDivisionError):
        return None
    return r if r > 0 else None



def probe(path: str | Path) -> ClipInfo:
    """Read a clip's streams with ffprobe.

    Args:
        path: a local file path.

    Returns:
        The clip's :class:`ClipInfo`.

    Raises:
        ClipError: the file is missing, empty, not a media file, or has no video stream.
    """
    path = str(path)
    p = Path(path)
    if not p.exists():
        raise ClipError(path, "file does not exist")
    if p.is_dir():
        raise ClipError(path, "is a directory, not a clip")
    if p.stat().st_size == 0:
        raise ClipError(path, "file is empty (0 bytes)")
    meta = ffprobe(path, "-show_streams", "-show_format")
    streams = meta.get("streams", [])
    fmt = meta.get("format", {})
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not video:
        kind = "audio-only file" if audio else "no streams ffmpeg can decode"
        raise ClipError(path, f"no video stream ({kind})")
    v = video[0]
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise ClipError(path, "video stream has no frame size")
    rotation = 0
    for side in v.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = int(round(float(side["rotation"])))
    if abs(rotation) % 180 == 90:
        width, height = height, width
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    if fps is None:
        raise ClipError(path, "video stream has no frame rate")
    v_dur = finite_float(v.get("duration")) or finite_float(fmt.get("duration"))
    if v_dur is None and v.get("nb_frames"):
        v_dur = int(v["nb_frames"]) / fps
    if v_dur is None or v_dur <= 0:
        raise ClipError(path, "video stream has no duration (truncated or still image?)")
    a = audio[0] if audio else None
    a_dur = (finite_float(a.get("duration")) or finite_float(fmt.get("duration"))) if a else None
    duration = finite_float(fmt.get("duration")) or max(v_dur, a_dur or 0.0)
    return ClipInfo(
        path=path,
        duration_s=duration,
        fps=fps,
        width=width,
        height=height,
        video_duration_s=v_dur,
        has_audio=a is not None,
        sample_rate=int(a["sample_rate"]) if a and a.get("sample_rate") else None,
        audio_duration_s=a_dur,
        video_codec=str(v.get("codec_name", "")),
    )


def iter_frames(
    path: str | Path,
    info: ClipInfo,
    fps: float = TARGET_FPS,
    max_frames: int | None = None,
    crop: tuple[int, int, int, int] | None = None,
    watchdog: Watchdog | None = None,
) -> Iterator[np.ndarray]:
    """Decode a clip at a constant frame rate, one RGB frame at a time.

    Frames are read from an ffmpeg pipe, so memory stays at a few frames whatever the clip length. ffmpeg's
    messages go to a temporary file, never to a pipe nobody reads (a damaged clip writes decode errors by the
    hundred kilobytes; a full pipe would block ffmpeg, and this reader with it).

    Args:
        path: local clip path.
        info: the clip's probe result (for the frame size).
        fps: output frame rate; frames are dropped or repeated by ffmpeg's ``fps`` filter.
        max_frames: stop after this many frames.
        crop: (x0, y0, x1, y1) area of the source frame to keep (e.g. from :func:`content_box`).
        watchdog: limits on the clip's work: ffmpeg is killed when it fires, and every frame is a beat.

    Yields:
        uint8 arrays ``[H, W, 3]`` (RGB), the crop's size when ``crop`` is given.

    Raises:
        ClipError: ffmpeg fails before producing any frame.
        ClipTimeout: the watchdog fired (a stalled decoder, or the clip's deadline passed).
    """
    width, height = info.width, info.height
    vf = f"fps={fps}"
    if crop is not None:
        x0, y0, x1, y1 = crop
        width, height = x1 - x0, y1 - y0
        vf = f"crop={width}:{height}:{x0}:{y0},{vf}"
    cmd = [
        require("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path),
        "-map", "0:v:0", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    frame_bytes = width * height * 3
    with tempfile.TemporaryFile() as err, contextlib.ExitStack() as stack:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, bufsize=frame_bytes)
        if watchdog is not None:
            watchdog.attach(proc)
            stack.callback(watchdog.detach, proc)
            stack.enter_context(watchdog.streaming())
        n = 0
        try:
            assert proc.stdout is not None
            while max_frames is None or n < max_frames:
                buf = proc.stdout.read(frame_bytes)
                if watchdog is not None:
                    watchdog.check()  # a read cut short by the watchdog's kill is not the clip's end
                if len(buf) < frame_bytes:
                    break
                n += 1
                yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
                if watchdog is not None:
                    watchdog.beat(f"frame {n}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if n == 0 and max_frames != 0:
            err.seek(0)
            msg = last_line(err.read(), "no frames decoded")
            raise ClipError(str(path), f"no video frame could be decoded ({msg})")


def content_box(
    path: str | Path, info: ClipInfo, fps: float = TARGET_FPS, threshold: int = 24, min_border: float = 0.03,
    watchdog: Watchdog | None = None,
) -> tuple[int, int, int, int] | None:
    """The area of a frame that holds picture, when a clip has black borders (letter/pillar-boxing).

    Video calls and re-uploads often pad the picture with black; faces then become too small for
    the face detector. The box is the extent of pixels brighter than ``threshold`` over frames
    sampled from the first 4 seconds.

    Args:
        path: local clip path.
        info: the clip's probe result.
        fps: sampling rate of the decode.
        threshold: a pixel whose brightest channel exceeds this is picture.
        min_border: borders thinner than this fraction of the frame are kept.
        watchdog: limits on the clip's work (see :func:`iter_frames`).

    Returns:
        (x0, y0, x1, y1) with even coordinates, or None when there is no border worth removing.
    """
    seen = np.zeros((info.height, info.width), bool)
    # one frame in ten: ffmpeg's fps filter drops the rest before colour conversion and the pipe
    for frame in iter_frames(path, info, fps / 10, max_frames=int(0.4 * fps), watchdog=watchdog):
        seen |= frame.max(-1) > threshold
    if not seen.any():
        return None
    ys, xs = np.where(seen.any(1))[0], np.where(seen.any(0))[0]
    x0, x1 = int(xs[0]) // 2 * 2, min((int(xs[-1]) + 2) // 2 * 2, info.width)
    y0, y1 = int(ys[0]) // 2 * 2, min((int(ys[-1]) + 2) // 2 * 2, info.height)
    if (x1 - x0) > (1 - min_border) * info.width and (y1 - y0) > (1 - min_border) * info.height:
        return None
    return x0, y0, x1, y1
