"""``parley build-dataset`` and ``parley export radnerf`` as a user runs them: messages and exit codes.

The CLI runs in this process on the session's local Ray cluster (the kill / resume test in
tests/pipelines/test_build.py runs it as a separate process with its own cluster).
"""

from __future__ import annotations

import json

import pytest

from jobs.cli import main
from tests.conftest import CLIPS, link_clip

pytestmark = pytest.mark.timeout(600)

COMMON = ["--max-frames", "12", "--num-workers", "2", "--cpus-per-worker", "0.5", "--memory-per-worker-gb", "1"]


def test_every_clip_failed_exits_1_and_strict_exits_1_on_any_failure(ray_local, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.mp4").write_text("not a video")
    (bad / "b.mkv").write_bytes(b"")
    assert main(["build-dataset", "-i", str(bad), "-o", str(tmp_path / "ds1"), *COMMON]) == 1
    out, err = capsys.readouterr()
    assert "0 ok, 2 failed" in out and "FAILED" in out and "every clip failed" in err
    assert "a.mp4" in err and "not a readable media file" in err  # progress lines name file and reason

    mixed = tmp_path / "mixed"
    link_clip(CLIPS[0], mixed / CLIPS[0].name)
    (mixed / "broken.mp4").write_text("nope")
    out_ds = tmp_path / "ds2"
    assert main(["build-dataset", "-i", str(mixed), "-o", str(out_ds), *COMMON]) == 0
    out, _ = capsys.readouterr()
    assert "1 ok, 1 failed" in out and "broken.mp4" in out
    # nothing left to build: still a failure on record, which --strict turns into an exit code
    assert main(["build-dataset", "-i", str(mixed), "-o", str(out_ds), *COMMON, "--strict"]) == 1
    out, err = capsys.readouterr()
    assert "2 already built" in out and "--strict" in err

    # and the dataset exports to RAD-NeRF's layout from the command line
    dest = tmp_path / "rad"
    assert main(["export", "radnerf", "--dataset", str(out_ds), "--identity", CLIPS[0].stem, "-o", str(dest)]) == 0
    out, _ = capsys.readouterr()
    assert "12 frames" in out
    frames = json.loads((dest / "transforms_train.json").read_text())["frames"]
    assert len(frames) == 10 and frames[0]["img_id"] == 0
    assert main(["export", "radnerf", "--dataset", str(out_ds), "--identity", "nobody", "-o", str(dest)]) == 2
    _, err = capsys.readouterr()
    assert "nobody" in err and CLIPS[0].stem in err


def test_bad_manifest_is_a_clear_error_before_any_work(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("path,who\nx.mp4,a\n")
    assert main(["build-dataset", "-i", str(m), "-o", str(tmp_path / "ds")]) == 2
    _, err = capsys.readouterr()
    assert str(m) in err and "source_uri" in err
