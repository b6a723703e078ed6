"""Encoding RGB frames to an H.264 video with ffmpeg (what ``parley render`` and training previews write).

The writer is the one place that feeds ffmpeg rather than reading from it, so it lives apart from the clip probe and
decode (:mod:`workers.media`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np

from workers.errors import ClipError
from workers.ffmpeg_tools import last_line, require


class VideoWriter:
    """Encode RGB frames to an H.264 (yuv420p) video with ffmpeg, optionally with an audio track.

    Frames go to ffmpeg through a pipe, so memory stays at one frame. The file appears at ``path``
    only when the writer closes successfully (it is written under a temporary name in the same
    folder and renamed); an exception inside the ``with`` block kills ffmpeg and removes the
    partial file.

    The video lasts as long as the frames written. The audio track is not cut (no ``-shortest``):
    write ``ceil(audio_duration(audio) * fps)`` frames so the video covers the audio.

    Example::

        with VideoWriter("out.mp4", 25.0, (512, 512), audio="speech.wav") as writer:
            for frame in frames:  # uint8 [512, 512, 3] RGB
                writer.write(frame)

    Args:
        path: output file; the container follows its extension (``.mp4`` recommended).
        fps: frame rate of the written frames.
        size: ``(width, height)`` of every frame; both must be even (yuv420p).
        audio: a file (wav, mp3, mp4, ...) whose first audio stream is muxed as AAC, or None.
        crf: x264 constant rate factor (0 lossless .. 51; 18 is visually lossless).

    Raises:
        ValueError: odd or non-positive size, non-positive fps or a crf outside 0..51.
        ClipError: ``audio`` does not exist.
        RuntimeError: ffmpeg is not installed.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int],
        audio: str | Path | None = None,
        crf: int = 18,
    ):
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"VideoWriter: frame size must be positive, got (width, height) = {size}")
        if width % 2 or height % 2:
            raise ValueError(
                f"VideoWriter: H.264 yuv420p needs an even width and height, got (width, height) = ({width}, {height});"
                " crop or pad the frames by one pixel"
            )
        if not fps > 0:
            raise ValueError(f"VideoWriter: fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"VideoWriter: crf must be in 0..51, got {crf}")
        if audio is not None and not Path(audio).is_file():
            raise ClipError(str(audio), "audio file does not exist")
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (width, height)
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial-{uuid.uuid4().hex[:8]}{self.path.suffix}")
        rate = Fraction(fps).limit_denominator(1001)
        cmd = [
            require("ffmpeg"), "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(rate), "-i", "pipe:0",
        ]
        if audio is not None:
            cmd += ["-i", str(audio)]
        cmd += ["-map", "0:v:0", "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p"]
        if audio is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-movflags", "+faststart", str(self._tmp)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # ffmpeg's messages go to a file, not a pipe nobody reads while frames are written (a full pipe blocks)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the writer, closed by close/abort
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except BaseException:
            self._stderr.close()
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _last_error(self) -> str:
        self._stderr.seek(0)
        return last_line(self._stderr.read(), "no message")

    def write(self, frame: np.ndarray) -> None:
        """Append one frame.

        Args:
            frame: uint8 ``[H, W, 3]`` RGB, with (W, H) equal to the writer's ``size``.

        Raises:
            ValueError: wrong shape or dtype.
            RuntimeError: the writer is closed, or ffmpeg has stopped (its last error line is given).
        """
        width, height = self.size
        if frame.shape != (height, width, 3):
            raise ValueError(
                f"VideoWriter: expected a frame of shape {(height, width, 3)} ([H, W, 3]), got {frame.shape}"
            )
        if frame.dtype != np.uint8:
            raise ValueError(f"VideoWriter: expected a uint8 frame, got {frame.dtype}")
        if self._proc is None:
            raise RuntimeError(f"VideoWriter for {self.path} is closed")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except OSError as exc:  # ffmpeg exited (bad audio input, disk full, ...)
            self._proc.wait()
            msg = self._last_error()
            self.abort()
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {msg}") from exc
        self.frames_written += 1

    def close(self) -> None:
        """Finish encoding and move the video to ``path``; a second call does nothing.

        Raises:
            RuntimeError: no frame was written, or ffmpeg failed (its last error line is given); no
                file is left behind either way.
        """
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        returncode = proc.wait()
        if returncode != 0 or self.frames_written == 0:
            msg = self._last_error() if returncode != 0 else "no frame was written"
            self.abort()
            raise RuntimeError(f"ffmpeg failed to write {self.path}: {msg}")
        self._proc = None
        self._stderr.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; a closed writer is left as it is."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait()
        self._stderr.close()
        self._tmp.unlink(missing_ok=True)
