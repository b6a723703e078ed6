"""Bad inputs to the per-clip worker: each ends in a clear outcome (a ClipError or a usable result).

Every odd clip is made with ffmpeg from one real clip of ``../shared/data/clips`` into a temporary
directory; one ClipProcessor with a cheap fit serves the whole module.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from workers import assets
from workers.clip import ClipConfig, ClipProcessor, ClipResult
from workers.errors import AssetError, ClipError
from workers.morphable import FitConfig

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SOURCE = SHARED / "data" / "clips" / "WDA_BobMenendez_000.mp4"
SOURCE_FRAMES = 200
FPS = 25.0
FAST_FIT = FitConfig(search_iters=20, rigid_iters=20, joint_iters=30, focal_grid=(1.5, 2.5), fine_steps=0)


def _models_present() -> bool:
    try:
        for name in ("face_landmarker", "selfie_segmentation", "ict_face_model"):
            assets.resolve(name, download=False)
    except AssetError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                       reason="ffmpeg/ffprobe not installed"),
    pytest.mark.skipif(not SOURCE.is_file(), reason=f"real clip {SOURCE} not found"),
    pytest.mark.skipif(not _models_present(),
                       reason="model assets not found (set PARLEY_ASSETS=../shared/assets)"),
    pytest.mark.timeout(300),
]


def _ffmpeg(*args: str | Path) -> None:
    """Run ffmpeg quietly, failing the test (not hanging) if it errors or stalls."""
    cmd = ["ffmpeg", "-y", "-v", "error", "-nostdin", *(str(a) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ffmpeg failed: {' '.join(cmd)}\n{proc.stderr}"


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="module")
def processor():
    """One ClipProcessor with a cheap fit for the whole module."""
    proc = ClipProcessor(ClipConfig(fit=FAST_FIT))
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """Module-wide directory for generated media."""
    return tmp_path_factory.mktemp("bad_inputs")


def _assert_clip_error(exc: ClipError, path: Path, *words: str) -> None:
    text = str(exc)
    assert str(path) in text and exc.path == str(path)
    for w in words:
        assert w in exc.reason, f"{w!r} not in reason {exc.reason!r}"


def _assert_rows_consistent(result: ClipResult) -> None:
    n = result.summary["n_frames"]
    assert len(result.rows) == n * result.summary["n_people"]
    assert [r["frame_index"] for r in result.rows] == list(range(n))
    for r in result.rows:
        if r["face_found"]:
            assert r["error"] is None and r["landmarks_2d"] is not None
        else:
            assert r["error"] == "no face detected" and r["landmarks_2d"] is None


def test_empty_file(processor, tmp_path):
    """A 0-byte .mp4 raises ClipError naming the file and saying it is empty."""
    path = tmp_path / "x.mp4"
    path.write_bytes(b"")
    with pytest.raises(ClipError) as info:
        processor(path)
    _assert_clip_error(info.value, path, "empty")


def test_missing_file(processor, tmp_path):
    """A path that does not exist raises ClipError 'does not exist'."""
    path = tmp_path / "nowhere.mp4"
    with pytest.raises(ClipError) as info:
        processor(path)
    _assert_clip_error(info.value, path, "does not exist")


@pytest.mark.parametrize("layout", ["moov_at_end", "faststart"])
def test_truncated_mp4(processor, media_dir, tmp_path, layout):
    """The first 30% of an mp4 gives a ClipError with a reason or a result with fewer frames."""
    if layout == "moov_at_end":
        src = SOURCE  # the real clip keeps its index (moov) after the media data
    else:
        src = media_dir / "faststart.mp4"  # index first: ffmpeg decodes the frames that are there
        if not src.exists():
            _ffmpeg("-i", SOURCE, "-t", "3", *H264, "-c:a", "aac", "-movflags", "+faststart", src)
    data = src.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    full = SOURCE_FRAMES if layout == "moov_at_end" else 75
    try:
        result = processor(path)
    except ClipError as exc:
        outcome = "error"
        _assert_clip_error(exc, path)
        assert exc.reason.strip()
    else:
        outcome = "partial"
        assert 0 < result.summary["n_frames"] < full
        _assert_rows_consistent(result)
    assert outcome in ("error", "partial")
    if layout == "moov_at_end":
        assert outcome == "error"  # without its index the file cannot be read at all


def test_text_file_named_mp4(processor, tmp_path):
    """A text file named .mp4 raises ClipError 'not a readable media file'."""
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(ClipError) as info:
        processor(path)
    _assert_clip_error(info.value, path, "not a readable media file")


def test_video_without_audio(processor, tmp_path):
    """A clip without audio gives rows with audio_valid False and a 'no audio' warning."""
    path = tmp_path / "silent.mp4"
    _ffmpeg("-i", SOURCE, "-t", "2", "-an", *H264, path)
    result = processor(path)
    s = result.summary
    assert s["has_audio"] is False
    assert s["warning"] and "no audio" in s["warning"]
    assert s["audio_duration_s"] is None and s["sample_rate"] is None
    assert abs(s["n_frames"] - 50) <= 1
    assert result.rows and all(r["audio_valid"] is False for r in result.rows)
    assert all(r["speaking"] is None for r in result.rows)
    assert any(r["face_found"] for r in result.rows)
    _assert_rows_consistent(result)


@pytest.mark.parametrize("ext,codec", [("wav", "pcm_s16le"), ("m4a", "aac")])
def test_audio_only(processor, tmp_path, ext, codec):
    """An audio-only file raises ClipError 'no video stream'."""
    path = tmp_path / f"voice.{ext}"
    _ffmpeg("-i", SOURCE, "-t", "2", "-vn", "-c:a", codec, path)
    with pytest.raises(ClipError) as info:
        processor(path)
    _assert_clip_error(info.value, path, "no video stream")


def test_no_face(processor, tmp_path):
    """A synthetic test pattern with sound raises ClipError 'no face'."""
    path = tmp_path / "pattern.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=256x256:rate=25", "-f", "lavfi",
            "-i", "sine=frequency=440:sample_rate=16000", "-t", "2", *H264, "-c:a", "aac", path)
    with pytest.raises(ClipError) as info:
        processor(path)
    _assert_clip_error(info.value, path, "no face")


@pytest.mark.parametrize("rate", [30, 60])
def test_other_frame_rates_resampled(processor, tmp_path, rate):
    """30 and 60 fps sources are resampled to 25 fps and report their source rate."""
    path = tmp_path / f"clip_{rate}fps.mp4"
    _ffmpeg("-i", SOURCE, "-t", "2", "-vf", f"fps={rate}", *H264, "-c:a", "aac", path)
    result = processor(path)
    s = result.summary
    assert s["fps"] == pytest.approx(rate, rel=0.01)
    assert abs(s["n_frames"] - 50) <= 1
    times = np.array([r["time_s"] for r in result.rows])
    np.testing.assert_allclose(np.diff(times), 1.0 / FPS, atol=1e-9)
    assert times[0] == 0.0
    assert all(r["audio_valid"] for r in result.rows[:45])
    _assert_rows_consistent(result)


def test_tiny_frames(processor, tmp_path):
    """A 64x64 clip ends in ClipError 'no face' or rows whose faceless frames say 'no face detected'."""
    path = tmp_path / "tiny.mp4"
    _ffmpeg("-i", SOURCE, "-t", "2", "-vf", "scale=64:64", *H264, "-c:a", "aac", path)
    try:
        result = processor(path)
    except ClipError as exc:
        outcome = "no_face_error"
        _assert_clip_error(exc, path, "no face")
    else:
        outcome = "rows"
        assert result.summary["width"] == 64 and result.summary["height"] == 64
        assert abs(result.summary["n_frames"] - 50) <= 1
        _assert_rows_consistent(result)
    assert outcome in ("no_face_error", "rows")


def test_audio_shorter_than_video(processor, tmp_path):
    """3 s of video with 1 s of audio: rows for all 75 frames, audio_valid only in the first second."""
    path = tmp_path / "short_audio.mp4"
    _ffmpeg("-t", "3", "-i", SOURCE, "-t", "1", "-i", SOURCE, "-map", "0:v:0", "-map", "1:a:0",
            *H264, "-c:a", "aac", path)
    result = processor(path)
    s = result.summary
    assert s["has_audio"] is True and s["warning"] is None
    assert abs(s["n_frames"] - 75) <= 1
    _assert_rows_consistent(result)
    audio_s = s["audio_duration_s"]
    assert 0.9 < audio_s < 1.2
    for r in result.rows:
        assert r["audio_valid"] is (r["time_s"] < audio_s)
        if r["time_s"] < 0.9:
            assert r["audio_valid"] is True
        if r["time_s"] >= 1.2:
            assert r["audio_valid"] is False
            assert r["rms"] == 0.0
