"""`parley extract` end to end: a real clip and a bad file in, Parquet and a contact sheet out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import CLIPS


def test_extract_writes_partitioned_rows_failures_and_qc(tmp_path):
    """Frames land under identity=<stem>, the bad file gets a failed clips/ row, exit code 0."""
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    short = tmp_path / "short.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(CLIPS[0]), "-t", "1.2", "-c:v", "libx264", "-c:a", "aac",
                    str(short)], check=True)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "extract", str(short), str(bad), "-o", str(out), "--crop-size", "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "extracted 1 clip(s), 30 frames" in proc.stdout
    assert "notes.mp4" in proc.stderr and "not a readable media file" in proc.stderr

    frames = pq.read_table(out / "frames" / "identity=short").to_pylist()
    assert len(frames) == 30 and frames[0]["image_size"] == 256
    clips = pq.read_table(out / "clips").to_pylist()
    status = {Path(c["source_uri"]).name: (c["status"], c["error"]) for c in clips}
    assert status["short.mp4"] == ("ok", None)
    assert status["notes.mp4"][0] == "failed" and "not a readable media file" in status["notes.mp4"][1]
    sheets = list((out / "qc").glob("short__*.png"))
    assert len(sheets) == 1 and sheets[0].stat().st_size > 10_000

    # Re-running overwrites the same files: no duplicated rows.
    subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300, check=True)
    assert pq.read_table(out / "frames" / "identity=short").num_rows == 30


def test_extract_exits_non_zero_when_every_clip_fails(tmp_path):
    """Only failures: exit code 1 and the reason on stderr."""
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "extract", str(tmp_path / "missing.mp4"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr
