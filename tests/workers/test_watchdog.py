"""A damaged clip must not hang its worker: ffmpeg's decode errors never fill a pipe, and the watchdog ends
decodes that stall or run past their deadline (issue 34, item 3)."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CLIPS
from workers import media
from workers.errors import ClipError
from workers.watchdog import ClipTimeout, Watchdog

pytestmark = pytest.mark.timeout(300)


def damaged_long_clip(d: Path) -> Path:
    """Two minutes of a shared clip (stream copy) with 3000 bytes flipped: ffmpeg writes ~180 KB of decode
    errors while still decoding all 3000 frames."""
    long = d / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "14", "-i", str(CLIPS[0]), "-c", "copy",
                    str(long)], check=True)
    data = bytearray(long.read_bytes())
    rng = random.Random(0)
    for _ in range(3000):
        data[rng.randrange(len(data) // 20, len(data))] ^= 0xFF
    bad = d / "damaged.mp4"
    bad.write_bytes(bytes(data))
    long.unlink()
    return bad


def decode_in_thread(path: Path, limit_s: float, watchdog: Watchdog | None = None) -> dict:
    """Count a clip's frames in a daemon thread; the result says whether it finished within ``limit_s``."""
    out: dict = {"frames": 0, "error": None}

    def run() -> None:
        try:
            info = media.probe(path)
            for _ in media.iter_frames(path, info, **({"watchdog": watchdog} if watchdog else {})):
                out["frames"] += 1
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(limit_s)
    out["finished"] = not t.is_alive()
    out["seconds"] = time.monotonic() - t0
    return out


def test_damaged_clip_with_many_decode_errors_decodes_to_the_end(tmp_path):
    """ffmpeg's hundreds of KB of decode errors go to a file: the decode reaches the last frame (the old pipe
    blocked after 500-750 frames)."""
    bad = damaged_long_clip(tmp_path)
    res = decode_in_thread(bad, limit_s=120)
    assert res["finished"], f"the decode hung after {res['frames']} frames"
    assert res["error"] is None
    assert res["frames"] >= 2900


def test_stalled_decoder_is_killed_and_reported(tmp_path):
    """A source that stops delivering (a FIFO nobody writes to after the header) stalls ffmpeg: the watchdog
    kills it after the stall limit and the reader raises ClipTimeout naming the stall, instead of waiting for
    ever."""
    info = media.probe(CLIPS[0])
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    data = CLIPS[0].read_bytes()
    feeder_done = threading.Event()

    def feed() -> None:  # the first fifth of the clip, then silence with the pipe held open
        with open(fifo, "wb") as f:
            f.write(data[: len(data) // 5])
            f.flush()
            feeder_done.wait(60)

    threading.Thread(target=feed, daemon=True).start()
    out: dict = {}
    t0 = time.monotonic()
    with Watchdog(str(fifo), stall_s=2.0, base_s=None) as dog:
        try:
            for _ in media.iter_frames(fifo, info, watchdog=dog):
                pass
        except ClipTimeout as exc:
            out["error"] = exc
    feeder_done.set()
    assert isinstance(out.get("error"), ClipTimeout), "the stalled decode was not ended"
    assert "stalled" in str(out["error"]) and str(fifo) in str(out["error"])
    assert time.monotonic() - t0 < 30


def test_deadline_ends_a_decode_and_is_not_taken_for_the_clips_end(tmp_path):
    """A clip past its deadline raises ClipTimeout (not a short, 'successful' decode) even while frames flow."""
    info = media.probe(CLIPS[0])
    with pytest.raises(ClipTimeout, match="timed out"), Watchdog(str(CLIPS[0]), stall_s=None, base_s=0.5) as dog:
        for _ in media.iter_frames(CLIPS[0], info, watchdog=dog):
            time.sleep(0.05)  # 200 frames x 50 ms: well past the 0.5 s deadline


def test_work_that_never_checks_reaches_the_last_resort():
    """Work stuck where no check runs (a native call) gets ``on_stuck`` with the reason after the grace time."""
    called: list[str] = []
    with Watchdog("clip.mp4", stall_s=None, base_s=0.2, grace_s=0.3, on_stuck=called.append, poll_s=0.05):
        deadline = time.monotonic() + 5
        while not called and time.monotonic() < deadline:
            time.sleep(0.05)  # no beat, no check
    assert called and "timed out" in called[0] and "did not stop" in called[0]


@pytest.mark.parametrize("frames", [1, 2, 4])
def test_clips_of_a_few_frames_are_too_short_not_undecodable(processor, tmp_path, frames):
    """Clips of 1-4 frames fail with 'too short' and their frame count (the speaking flag crashed on 2-4)."""
    clip = tmp_path / f"short{frames}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(CLIPS[0]), "-frames:v", str(frames), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-an", str(clip)], check=True)
    with pytest.raises(ClipError, match=r"too short: \d frame"):
        processor(clip)
