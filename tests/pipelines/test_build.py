"""The Ray Data build on a real local Ray cluster, with the real shared clips and bad files.

One clean build is the reference; re-runs, an added clip, a killed-and-resumed build and a manifest
that moves a clip between identities are checked against it. Clips are cut to a few frames
(``max_frames``) so the module runs in minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.build import build
from pipelines.build_config import BuildConfig, Resources
from pipelines.dataset import Dataset
from tests.conftest import CLIPS, ROOT, link_clip
from workers.clip import ClipConfig, clip_id_for

pytestmark = pytest.mark.timeout(900)

N = 24  # frames per clip
RES = Resources(cpus_per_worker=0.5, num_workers=2, memory_per_worker_gb=1.0)
CLIP = ClipConfig(max_frames=N)


def make_bad_files(d: Path) -> dict[str, str]:
    """Bad inputs beside the good clips: {file name: words its error must contain}."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "truncated.mp4").write_bytes(CLIPS[0].read_bytes()[:6000])
    (d / "notes.mp4").write_text("this is not a video\n")
    (d / "empty.mov").write_bytes(b"")
    wav = sorted((ROOT.parent / "shared" / "data" / "audio").glob("*.wav"))[0]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-t", "2", "-i", str(wav), "-c:a", "aac", str(d / "audio_only.mp4")],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2",
                    "-pix_fmt", "yuv420p", str(d / "no_face.mp4")], check=True)
    return {"truncated.mp4": "not a readable media file", "notes.mp4": "not a readable media file",
            "empty.mov": "empty", "audio_only.mp4": "no video", "no_face.mp4": "no face"}


def frame_keys(root: Path) -> dict[str, list[tuple[str, int]]]:
    """{identity: sorted (clip_id, frame_index)} of a dataset (duplicates would show up twice)."""
    ds = Dataset(str(root))
    out = {}
    for ident in ds.identity_names():
        t = ds.frames(ident, columns=["clip_id", "frame_index"])
        out[ident] = sorted(zip(t.column("clip_id").to_pylist(), t.column("frame_index").to_pylist(), strict=True))
    return out


def files(root: Path) -> dict[str, float]:
    """Every file under a dataset and its modification time (the lock file of the build's lease aside)."""
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] != "_build"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("inputs")
    for c in CLIPS:
        link_clip(c, d / c.name)
    return d, make_bad_files(d)


@pytest.fixture(scope="module")
def clean(ray_local, inputs, tmp_path_factory):
    """The reference: one build of the 3 clips and 5 bad files."""
    out = tmp_path_factory.mktemp("clean") / "ds"
    rows = []
    report = build(BuildConfig(inputs=[str(inputs[0])], output=str(out), clip=CLIP, resources=RES), on_row=rows.append)
    return out, report, rows


def test_build_writes_tables_partitions_and_failure_rows(clean, inputs):
    out, report, progress = clean
    bad = inputs[1]
    assert report.listed == 3 + len(bad) and len(report.ok) == 3 and len(report.failed) == len(bad)
    assert report.ok_total == 3 and report.failed_total == len(bad) and report.frames == 3 * N
    assert len(progress) == report.listed  # every clip reported as it finished
    ds = Dataset(str(out))
    clips = ds.clip_rows()
    assert len(clips) == report.listed
    by_name = {Path(r["source_uri"]).name: r for r in clips.values()}
    for name, words in bad.items():
        row = by_name[name]
        assert row["status"] == "failed" and row["error_kind"] == "input", row
        assert words in row["error"].lower(), (name, row["error"])
        assert row["clip_id"] == clip_id_for(str(inputs[0] / name))
    for c in CLIPS:
        row = by_name[c.name]
        assert row["status"] == "ok" and row["error"] is None and row["n_frames"] == N
        assert row["identity"] == c.stem and row["worker_peak_rss_mb"] > 100
        assert [p["identity"] for p in row["people"]] == [c.stem]
    # frames/ partitioned by identity, one file per clip, N rows each, no failed clip anywhere
    assert sorted(p.name for p in (out / "frames").iterdir()) == sorted(f"identity={c.stem}" for c in CLIPS)
    keys = frame_keys(out)
    assert all(len(v) == N and len(set(v)) == N for v in keys.values())
    # identities/ aggregated; QC per identity beside the dataset
    idents = ds.identities().to_pylist()
    assert [i["identity"] for i in idents] == sorted(c.stem for c in CLIPS)
    for i in idents:
        assert i["n_clips"] == 1 and i["n_rows"] == N and i["background_png"][:4] == b"\x89PNG"
        assert 0 < i["near"] < i["far"] and i["focal"] > 100 and len(i["identity_coeffs"]) > 0
        assert (out / "qc" / f"{i['identity']}.png").stat().st_size > 10_000
        assert (out / "qc" / f"{i['identity']}.json").exists()
    assert len((out / "qc" / "quality.csv").read_text().strip().splitlines()) == 1 + 3
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_rerun_builds_nothing_and_touches_nothing(ray_local, clean, inputs):
    out, first, _ = clean
    before = files(out)
    report = build(BuildConfig(inputs=[str(inputs[0])], output=str(out), clip=CLIP, resources=RES))
    assert report.built == [] and report.skipped == first.listed
    assert report.ok_total == 3 and report.qc_written == []
    assert files(out) == before
    assert report.seconds < first.seconds / 5


def test_added_clip_is_the_only_one_built(ray_local, clean, inputs, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(clean[0], out)
    new = link_clip(CLIPS[0], tmp_path / "more" / "second_take.mp4")
    report = build(BuildConfig(inputs=[str(inputs[0]), str(new.parent)], output=str(out), clip=CLIP, resources=RES))
    assert [r["source_uri"] for r in report.built] == [str(new)]
    assert report.skipped == clean[1].listed
    keys = frame_keys(out)
    assert sorted(keys) == sorted([c.stem for c in CLIPS] + ["second_take"])
    assert keys["second_take"] == [(clip_id_for(str(new)), i) for i in range(N)]
    assert len(Dataset(str(out)).identities()) == 4
    assert (out / "qc" / "second_take.png").exists() and report.qc_written == ["second_take"]


def test_killed_build_resumes_to_the_clean_rows(ray_local, clean, inputs, tmp_path):
    """SIGKILL the CLI (driver and its local cluster) after its first clip, re-run, compare to a clean build."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "jobs.cli", "build-dataset", "-i", str(inputs[0]), "-o", str(out),
           "--max-frames", str(N), "--num-workers", "2", "--cpus-per-worker", "0.5", "--ray-address", "local"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if list((out / "clips").glob("*.parquet")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    partial = Dataset(str(out)).clip_rows()
    assert 1 <= len(partial) < clean[1].listed, "expected a partial build"
    report = build(BuildConfig(inputs=[str(inputs[0])], output=str(out), clip=CLIP, resources=RES))
    assert report.skipped == len(partial) and len(report.built) == clean[1].listed - len(partial)
    assert frame_keys(out) == frame_keys(clean[0])
    ref, got = Dataset(str(clean[0])).clip_rows(), Dataset(str(out)).clip_rows()
    assert {k: (r["status"], r["error"]) for k, r in got.items()} == {k: (r["status"], r["error"]) for k, r in
                                                                     ref.items()}
    assert len(Dataset(str(out)).identities()) == 3


def test_manifest_identity_spans_clips_and_can_move(ray_local, tmp_path):
    a, b = CLIPS[0], CLIPS[1]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"source_uri,identity,role\n{a},alice,speaker\n{b},alice,speaker\n")
    out = tmp_path / "ds"
    cfg = BuildConfig(inputs=[str(manifest)], output=str(out), clip=CLIP, resources=RES, qc=False)
    build(cfg)
    ds = Dataset(str(out))
    alice = ds.identity("alice")
    assert alice["n_clips"] == 2 and alice["n_rows"] == 2 * N
    assert sorted(alice["clips"]) == sorted([clip_id_for(str(a)), clip_id_for(str(b))])
    assert set(ds.frames("alice", columns=["role"]).column("role").to_pylist()) == {"speaker"}
    # the second clip moves to bob: it alone is rebuilt, and alice keeps only her own frames
    manifest.write_text(f"source_uri,identity,role\n{a},alice,speaker\n{b},bob,listener\n")
    report = build(replace(cfg))
    assert [r["source_uri"] for r in report.built] == [str(b)]
    keys = frame_keys(out)
    assert {c for c, _ in keys["alice"]} == {clip_id_for(str(a))} and len(keys["alice"]) == N
    assert {c for c, _ in keys["bob"]} == {clip_id_for(str(b))}
    assert ds.identity("bob")["n_clips"] == 1 and ds.identity("alice")["n_clips"] == 1
