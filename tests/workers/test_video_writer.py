"""VideoWriter: H.264 + AAC from RGB frames and a real speech wav, atomic output, clear errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED
from workers.audio_decode import audio_duration
from workers.errors import ClipError
from workers.media import iter_frames, probe
from workers.video_writer import VideoWriter

WAV = SHARED / "data" / "audio" / "RD_Radio31_000.wav"
FPS = 25.0
SIZE = (64, 48)  # (width, height)

pytestmark = [
    pytest.mark.skipif(
        shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="ffmpeg/ffprobe not installed"
    ),
    pytest.mark.skipif(not WAV.is_file(), reason=f"real speech {WAV} not found"),
]


def _gradient(i: int, width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """Frame ``i`` of a moving colour gradient, uint8 [H, W, 3]."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    r = np.broadcast_to((x + 4 * i) % 256, (height, width))
    g = np.broadcast_to(y, (height, width))
    b = np.full((height, width), (8 * i) % 256)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def test_audio_duration_of_real_wav_and_errors(tmp_path: Path):
    """The shared wav lasts ~8 s; a missing file or a file without audio raises ClipError."""
    assert audio_duration(WAV) == pytest.approx(8.0, abs=0.05)
    with pytest.raises(ClipError, match="does not exist"):
        audio_duration(tmp_path / "missing.wav")
    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, FPS, SIZE) as writer:
        writer.write(_gradient(0))
    with pytest.raises(ClipError, match="no audio stream"):
        audio_duration(silent)


def test_writes_video_with_audio(tmp_path: Path):
    """ceil(audio * fps) frames plus the wav give an H.264 + audio file as long as the audio, frame for frame."""
    duration = audio_duration(WAV)
    n = math.ceil(duration * FPS)
    out = tmp_path / "talk.mp4"
    with VideoWriter(out, FPS, SIZE, audio=WAV) as writer:
        for i in range(n):
            writer.write(_gradient(i))
    assert writer.frames_written == n
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]  # no temporary left behind
    info = probe(out)
    assert info.video_codec == "h264" and (info.width, info.height) == SIZE and info.fps == pytest.approx(FPS)
    assert info.has_audio and info.audio_duration_s == pytest.approx(duration, abs=0.1)
    assert info.duration_s == pytest.approx(duration, abs=0.1)
    assert info.video_duration_s == pytest.approx(n / FPS, abs=1e-3)
    frames = list(iter_frames(out, info))
    assert len(frames) == n
    assert np.abs(frames[10].astype(int) - _gradient(10)).mean() < 4  # crf 18: close to the input


def test_exception_in_block_leaves_no_file(tmp_path: Path):
    """An exception inside the with block kills ffmpeg and removes the partial file."""
    out = tmp_path / "broken.mp4"
    with pytest.raises(KeyError), VideoWriter(out, FPS, SIZE, audio=WAV) as writer:
        for i in range(5):
            writer.write(_gradient(i))
        raise KeyError("renderer crashed")
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_raise(tmp_path: Path):
    """Odd sizes, a frame of the wrong shape or dtype, and closing without frames raise with clear messages."""
    with pytest.raises(ValueError, match="even width and height"):
        VideoWriter(tmp_path / "odd.mp4", FPS, (63, 48))
    with pytest.raises(ClipError, match="does not exist"):
        VideoWriter(tmp_path / "x.mp4", FPS, SIZE, audio=tmp_path / "missing.wav")
    with VideoWriter(tmp_path / "ok.mp4", FPS, SIZE) as writer:
        with pytest.raises(ValueError, match=r"expected a frame of shape \(48, 64, 3\).*\(64, 48, 3\)"):
            writer.write(np.zeros((64, 48, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        writer.write(_gradient(0))
    assert (tmp_path / "ok.mp4").is_file()
    empty = VideoWriter(tmp_path / "empty.mp4", FPS, SIZE)
    with pytest.raises(RuntimeError, match="no frame was written"):
        empty.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mp4"]


def test_ffmpeg_failure_is_reported(tmp_path: Path):
    """An audio file ffmpeg cannot read makes write or close raise RuntimeError with ffmpeg's message."""
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"RIFF not really a wav")
    writer = VideoWriter(tmp_path / "out.mp4", FPS, SIZE, audio=bad_audio)
    with pytest.raises(RuntimeError, match="ffmpeg.*bad.wav: Invalid data"):
        for i in range(50):
            writer.write(_gradient(i))
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]
