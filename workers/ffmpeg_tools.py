"""Running the ffmpeg command-line tools: finding them, ffprobe's JSON, the values it prints, their messages.

Shared by the clip probe and decode (:mod:`workers.media`), the audio reader (:mod:`workers.audio_decode`) and the
video writer (:mod:`workers.video_writer`), so each says the same thing when a tool is missing or fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np

from workers.errors import ClipError


def require(tool: str) -> str:
    """The path of an ffmpeg tool (``ffmpeg``, ``ffprobe``).

    Raises:
        RuntimeError: the tool is not installed (the message says how to install it).
    """
    exe = shutil.which(tool)
    if exe is None:
        raise RuntimeError(f"`{tool}` is not installed; install ffmpeg (e.g. `apt-get install ffmpeg`).")
    return exe


def last_line(messages: str | bytes, default: str) -> str:
    """The last line of a tool's messages (bytes are decoded, bad bytes replaced), or ``default`` when empty."""
    text = messages.decode(errors="replace") if isinstance(messages, bytes) else messages
    return (text.strip().splitlines() or [default])[-1]


def finite_float(value: object) -> float | None:
    """``value`` (a number or the string ffprobe prints) as a finite float, else None."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def ffprobe(path: str, *args: str) -> dict:
    """ffprobe's JSON about a file.

    Raises:
        ClipError: ffprobe fails or prints something that is not JSON.
    """
    cmd = [require("ffprobe"), "-v", "error", *args, "-of", "json", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ClipError(path, f"not a readable media file ({last_line(proc.stderr, 'unknown error')})")
    try:
        return json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise ClipError(path, f"ffprobe output unreadable ({exc})") from exc
