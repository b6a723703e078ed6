"""DialogueNeRF end to end on the platform: a constructed two-person clip (two shared solo clips side by side,
their audio alternating) built into a dataset, one Tune trial per conversation registering
``dialogue-<conversation>``, ``parley render-dialogue`` of the champion with a script, the pyfunc, and the bad
inputs of the issue.

Real throughout: the session's Ray cluster, an ``mlflow server`` on loopback, real clips processed by the clip
pipeline (faces, poses, active-speaker detection). The ``debug`` preset trains for seconds, so no figure here is a
quality measure (``benchmarks/dialogue.py`` measures them).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from jobs import registry
from jobs.cli import main
from jobs.fanout import run_fanout
from jobs.fanout_config import FanoutJob
from tests.conftest import SHARED
from tests.services import mlflow_server

pytestmark = pytest.mark.timeout(900)
CLIPS = SHARED / "data" / "clips"


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> tuple[Path, str, str]:
    """A dataset of two constructed conversations, built without Ray at 128 px: 4 s of RD_Radio2_000 beside
    WDA_BobMenendez_000, and its first second with the sound muted (nobody speaks). Returns (dataset, the
    conversation's id, the silent one's)."""
    from benchmarks.conversations import construct
    from pipelines.commit import write_clip
    from pipelines.dataset import Dataset, aggregate_identities, write_identities
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for
    from workers.morphable import FitConfig

    work = tmp_path_factory.mktemp("dialogue")
    pair = construct(CLIPS / "RD_Radio2_000.mp4", CLIPS / "WDA_BobMenendez_000.mp4", work / "pair.mp4", seed=1,
                     height=256, max_s=4.0).path
    silent = work / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(pair), "-t", "1", "-af", "volume=0", "-c:v", "copy",
                    str(silent)], check=True)
    st = Storage(work / "ds")
    p = ClipProcessor(ClipConfig(crop_size=128, fit=FitConfig(joint_iters=30)))
    try:
        for clip in (pair, silent):
            write_clip(st, p(str(clip), identity=clip.stem, clip_id=clip_id_for(str(clip))), identity=clip.stem)
    finally:
        p.close()
    ds = Dataset(st)
    write_identities(st, aggregate_identities(ds.clip_rows().values()))
    ids = {c["source_uri"]: c["conversation_id"] for c in ds.conversations().to_pylist()}
    return work / "ds", ids[str(pair)], ids[str(silent)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-dialogue")) as s:
        yield s


@pytest.fixture(scope="module")
def fanned(conversations, server, ray_local, tmp_path_factory):
    """One DialogueNeRF trial (debug preset) for the conversation, promoted to champion."""
    dataset, conv, _ = conversations
    work = tmp_path_factory.mktemp("dialogue_tune")
    job = FanoutJob(dataset=str(dataset), identities=[conv], method="dialogue", preset="debug",
                    tracking_uri=server.url, storage=str(work / "tune"), work_root=str(work / "scratch"),
                    cpus_per_trial=1.0, max_concurrent=1, name="dialogue")
    out = run_fanout(job)
    rc = main(["registry", "promote", "--method", "dialogue", "--identity", conv, "--tracking-uri", server.url])
    return out, rc


def test_a_trial_per_conversation_registers_one_model_of_both_people(conversations, fanned, server, tmp_path):
    from nerf.checkpoint import load_checkpoint

    _, conv, _ = conversations
    out, promoted = fanned
    assert [t["status"] for t in out["trials"]] == ["done"], out["trials"]
    assert promoted == 0
    versions = registry.versions(server.url, f"dialogue-{conv}")
    assert [int(v.version) for v in versions] == [1] and versions[0].tags["method"] == "dialogue"
    path, _ = registry.fetch_checkpoint(server.url, f"models:/dialogue-{conv}@champion", tmp_path)
    ckpt = load_checkpoint(path)
    kit, state = ckpt["render_kit"], ckpt["model"]
    assert ckpt["method"] == "dialogue" and ckpt["identity"] == conv
    assert kit["people"] == ["pair_p0", "pair_p1"] and kit["backgrounds"].shape[0] == 2
    assert state["shape_codes"].shape[0] == 2 and any(k.startswith("pose_forecaster.") for k in state)
    from jobs.tracking import client

    metrics = client(server.url).get_run(versions[0].run_id).data.metrics
    # Table III's columns and the pose metrics are logged in the trial's run
    for key in ("psnr_pair_p0", "psnr_pair_p1", "pose_rmse_deg", "motion_var_ratio", "pitch_corr_control"):
        assert key in metrics and np.isfinite(metrics[key]), key


def test_render_dialogue_from_the_champion_follows_the_script(conversations, fanned, server, tmp_path, capsys):
    from workers.media import probe

    _, conv, _ = conversations
    audio = tmp_path / "a.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(CLIPS / "WDA_AlexandriaOcasioCortez_000.mp4"), "-t", "3",
                    "-vn", str(audio)], check=True)
    script = tmp_path / "roles.csv"
    script.write_text("start,end,speaker\n0,1.5,pair_p0\n1.5,2.5,pair_p1\n2.5,3,none\n")
    args = ["render-dialogue", "--model", f"models:/dialogue-{conv}@champion", "--tracking-uri", server.url,
            "--audio", str(audio), "--script", str(script), "--size", "32"]
    assert main([*args, "--out", str(tmp_path / "x.mp4")]) == 0
    assert "pair_p0 speaks 51%, pair_p1 speaks 33%" in capsys.readouterr().out  # frames 0-37 and 38-62 of 75
    info = probe(str(tmp_path / "x.mp4"))
    assert info.has_audio and (info.width, info.height) == (64, 32) and abs(info.video_duration_s - 3.0) < 0.1
    # a speaker the model does not hold: a clear error naming the file, the line and the people
    script.write_text("start,end,speaker\n0,1,somebody\n")
    assert main([*args, "--out", str(tmp_path / "y.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"{script} line 2" in err and "pair_p0, pair_p1" in err and not (tmp_path / "y.mp4").exists()
    # the pyfunc takes the same inputs per row
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    pyfunc = mlflow.pyfunc.load_model(f"models:/dialogue-{conv}@champion")
    rows = pd.DataFrame({"audio": [str(audio)], "out": [str(tmp_path / "pf.mp4")]})
    assert pyfunc.predict(rows, params={"size": 32}) == [str(tmp_path / "pf.mp4")]
    assert probe(str(tmp_path / "pf.mp4")).width == 64


def test_a_long_audio_renders_on_and_the_motion_stays_in_range(conversations, fanned, server, tmp_path):
    """Audio three times the 4-s training clip: the forecasters run on (their own output fed back), and the
    generated poses stay within the people's training range."""
    from jobs.render_dialogue import render_dialogue

    _, conv, _ = conversations
    path, _ = registry.fetch_checkpoint(server.url, f"models:/dialogue-{conv}@champion", tmp_path)
    audio = tmp_path / "long.wav"
    src = SHARED / "data" / "audio" / "RD_Radio31_000.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "1", "-i", str(src), "-t", "12", str(audio)],
                   check=True)
    r = render_dialogue(path, audio, tmp_path / "long.mp4", size=16)
    assert r["frames"] == 300
    from nerf.checkpoint import load_checkpoint

    stats = load_checkpoint(path)["model"]["pose_stats"].numpy()
    late = r["poses"][-150:].mean(0)  # [P, 6]
    assert (np.abs(late - stats[:, 0]) < 4 * stats[:, 1]).all()


def test_bad_inputs_are_named(conversations, fanned, server, tmp_path, capsys):
    dataset, conv, silent = conversations
    base = ["train", "--method", "dialogue", "--preset", "debug", "--dataset", str(dataset), "--output",
            str(tmp_path / "run")]
    # a conversation in which nobody speaks
    assert main([*base, "--identity", silent]) == 2
    assert f"conversation {silent} has no segment with a speaker" in capsys.readouterr().err
    # an identity the dataset lacks, among identities joined by '+'
    assert main([*base, "--identity", "pair_p0+nobody"]) == 2
    assert "unknown: nobody" in capsys.readouterr().err
    # a dialogue model is refused by the one-person render, with the command to use
    with pytest.raises(ValueError, match="render-dialogue"):
        from jobs.render import render_audio

        path, _ = registry.fetch_checkpoint(server.url, f"models:/dialogue-{conv}/1", tmp_path)
        render_audio(path, SHARED / "data" / "audio" / "RD_Radio31_000.wav", tmp_path / "z.mp4")


def test_dataset_conversations_lists_them(conversations, capsys):
    dataset, conv, silent = conversations
    assert main(["dataset", "conversations", str(dataset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(conv) and "pair_p0" in line and "pair_p1" in line for line in lines)
    assert any(line.startswith(silent) and " 0% / 0%" in line for line in lines)
