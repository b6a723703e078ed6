"""Builds that meet dying, hanging and vanishing clips on a real local Ray cluster end, with a failed row per bad
clip and the other clips built (issue 34, items 2, 3 and 6).

Worker deaths and hangs in native code cannot be caused on purpose with a real clip, so the build's testing hook
(``PARLEY_FAULT_INJECT``) ends or blocks the worker process at the start of the named clip: the process really
dies (``os._exit``) or really blocks where no watchdog check runs, and Ray really restarts the actor.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from pipelines.build import build
from pipelines.build_config import BuildConfig, Resources
from pipelines.build_worker import ATTEMPTS_DIR, FAULT_ENV
from pipelines.commit import REBUILD_FAILED
from pipelines.dataset import Dataset
from tests.conftest import CLIPS, link_clip
from workers.clip import ClipConfig, clip_id_for

pytestmark = pytest.mark.timeout(600)

CLIP = ClipConfig(max_frames=8)


def test_a_clip_that_kills_or_hangs_its_worker_fails_and_the_build_goes_on(ray_local, tmp_path, monkeypatch):
    """A clip whose worker dies every time gets a failed row after max_attempts deaths; one that blocks where no
    check runs is ended by the watchdog's last resort; the good clip is built; the build returns."""
    d = tmp_path / "in"
    crash = link_clip(CLIPS[0], d / "crash_me.mp4")
    stuck = link_clip(CLIPS[1], d / "stuck_me.mp4")
    good = link_clip(CLIPS[2], d / "good.mp4")
    out = tmp_path / "ds"
    monkeypatch.setenv(FAULT_ENV, "exit:crash_me,hang:stuck_me")
    res = Resources(cpus_per_worker=0.5, num_workers=2, memory_per_worker_gb=1.0, clip_timeout_s=25.0,
                    stall_timeout_s=20.0, max_attempts=2)  # generous: the good clip must pass on a loaded machine
    result: dict = {}

    def run() -> None:  # in a thread: an endless retry loop fails the join below instead of hanging the suite
        result["report"] = build(BuildConfig(inputs=[str(d)], output=str(out), clip=CLIP, resources=res, qc=False))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(420)
    assert not t.is_alive(), "the build did not end"
    report = result["report"]
    rows = Dataset(str(out)).clip_rows()
    assert rows[clip_id_for(str(good))]["status"] == "ok", rows[clip_id_for(str(good))]["error"]
    died = rows[clip_id_for(str(crash))]
    assert (died["status"], died["error_kind"]) == ("failed", "internal")
    assert "died 2 time(s)" in died["error"], died["error"]
    hung = rows[clip_id_for(str(stuck))]
    assert (hung["status"], hung["error_kind"]) == ("failed", "internal")
    assert "timed out" in hung["error"] and "did not stop" in hung["error"], hung["error"]
    assert len(report.built) == 3 and len(report.failed) == 2
    assert not list((out / ATTEMPTS_DIR).glob("*/*.json")), "attempt markers were left behind"


def test_a_failed_rebuild_keeps_the_last_good_rows(ray_local, tmp_path):
    """--force with a source missing at that moment: the clip's good row and frames stay, its warning says the
    rebuild failed and why; the build reports the failure."""
    d = tmp_path / "in"
    clip = link_clip(CLIPS[0], d / "alice.mp4")
    out = tmp_path / "ds"
    res = Resources(cpus_per_worker=0.5, num_workers=1, memory_per_worker_gb=1.0)
    build(BuildConfig(inputs=[str(d)], output=str(out), clip=CLIP, resources=res, qc=False))
    ds = Dataset(str(out))
    before = ds.frames("alice", columns=["frame_index"]).num_rows
    assert before == CLIP.max_frames
    manifest = tmp_path / "m.csv"  # the manifest still lists the clip, the file is gone for now
    manifest.write_text(f"source_uri,identity\n{clip},alice\n")
    shutil.move(clip, tmp_path / "away.mp4")
    report = build(BuildConfig(inputs=[str(manifest)], output=str(out), clip=CLIP, resources=res, qc=False,
                               force=True))
    assert [r["status"] for r in report.built] == ["failed"]
    assert report.built[0]["kept_previous"] is True
    row = ds.clip_rows()[clip_id_for(str(clip))]
    assert row["status"] == "ok"
    assert row["warning"].startswith(REBUILD_FAILED) and "does not exist" in row["warning"]
    assert ds.frames("alice", columns=["frame_index"]).num_rows == before
    assert report.ok_total == 1
