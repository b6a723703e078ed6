"""Probing and streaming decode of clips with ffmpeg: bounded memory, constant frame rate."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from workers.errors import ClipError
from workers.watchdog import Watchdog

TARGET_FPS = 25.0
AUDIO_SAMPLE_RATE = 16000


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


def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise RuntimeError(f"`{tool}` is not installed; install ffmpeg (e.g. `apt-get install ffmpeg`).")
    return exe


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _rate(value: str | None) -> float | None:
    if not value or value in ("0/0", "0"):
        return None
    try:
        r = float(Fraction(value))
    except (ValueError, ZeroDivisionError):
        return None
    return r if r > 0 else None


def _ffprobe(path: str, *args: str) -> dict:
    """ffprobe's JSON about a file.

    Raises:
        ClipError: ffprobe fails or prints something that is not JSON.
    """
    cmd = [_require("ffprobe"), "-v", "error", *args, "-of", "json", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ClipError(path, f"not a readable media file ({msg})")
    try:
        return json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise ClipError(path, f"ffprobe output unreadable ({exc})") from exc


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
    meta = _ffprobe(path, "-show_streams", "-show_format")
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
    v_dur = _float(v.get("duration")) or _float(fmt.get("duration"))
    if v_dur is None and v.get("nb_frames"):
        v_dur = int(v["nb_frames"]) / fps
    if v_dur is None or v_dur <= 0:
        raise ClipError(path, "video stream has no duration (truncated or still image?)")
    a = audio[0] if audio else None
    a_dur = (_float(a.get("duration")) or _float(fmt.get("duration"))) if a else None
    duration = _float(fmt.get("duration")) or max(v_dur, a_dur or 0.0)
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
        _require("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path),
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
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise ClipError(str(path), f"no video frame could be decoded ({(lines or ['no frames decoded'])[-1]})")


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
        _require("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
        "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        msg = (proc.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[-1]
        raise ClipError(str(path), f"audio cannot be decoded ({msg})")
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
    meta = _ffprobe(path, "-select_streams", "a:0", "-show_entries", "stream=duration:format=duration")
    streams = meta.get("streams", [])
    if not streams:
        raise ClipError(path, "no audio stream")
    duration = _float(streams[0].get("duration")) or _float(meta.get("format", {}).get("duration"))
    if duration is None or duration <= 0:
        duration = len(read_audio(path)) / AUDIO_SAMPLE_RATE
    return duration


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
            _require("ffmpeg"), "-v", "error", "-y",
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
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

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
