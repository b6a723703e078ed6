"""Reading audio with ffmpeg: any file's first audio stream as mono float32 samples, and its duration.

Kept apart from the video probe and decode (:mod:`workers.media`): rendering reads a speech file alone, and the
clip worker reads a clip's audio in one call, not frame by frame.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from workers.errors import ClipError
from workers.ffmpeg_tools import ffprobe, finite_float, last_line, require

AUDIO_SAMPLE_RATE = 16000


def read_audio(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of a file to mono float32 at ``sample_rate``.

    Args:
        path: any file ffmpeg reads (wav, mp3, mp4, ...).
        sample_rate: output rate in Hz.

    Returns:
        float32 array ``[S]`` in [-1, 1].

    Raises:
        ClipError: the file has no audio stream or it cannot be decoded.
    """
    cmd = [
        require("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
        "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise ClipError(str(path), f"audio cannot be decoded ({last_line(proc.stderr, 'unknown error')})")
    return np.frombuffer(proc.stdout, np.float32).copy()


def audio_duration(path: str | Path) -> float:
    """Duration of a file's first audio stream.

    Args:
        path: any file ffmpeg reads (wav, mp3, mp4, ...).

    Returns:
        Seconds of audio: the stream's duration from ffprobe, or the decoded length when the
        container does not state one.

    Raises:
        ClipError: the file is missing or unreadable, or has no audio stream.
    """
    path = str(path)
    if not Path(path).is_file():
        raise ClipError(path, "file does not exist")
    meta = ffprobe(path, "-select_streams", "a:0", "-show_entries", "stream=duration:format=duration")
    streams = meta.get("streams", [])
    if not streams:
        raise ClipError(path, "no audio stream")
    duration = finite_float(streams[0].get("duration")) or finite_float(meta.get("format", {}).get("duration"))
    if duration is None or duration <= 0:
        duration = len(read_audio(path)) / AUDIO_SAMPLE_RATE
    return duration
