"""``parley train-audio`` on Ray Train with a real ``mlflow server``, then ``parley sync-score`` from the registry.

Real throughout: the session's local Ray cluster, an ``mlflow server`` subprocess, a dataset of the three shared
clips (60 frames each: two train, one is held out by the split), the ``tiny`` preset (seconds of training, so the
scores themselves mean nothing here; ``benchmarks/sync.py`` measures them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs import registry, tracking
from jobs.cli import main
from jobs.train_audio import AUDIO_LIP_MODEL, SCORER_MODEL
from nerf.audio_lip.checkpoint import load_audio_lip, load_scorer
from tests.conftest import SHARED

pytestmark = pytest.mark.timeout(900)
CLIP = SHARED / "data" / "clips" / "RD_Radio2_000.mp4"
LAST_LINE = re.compile(r"^lse_c=-?\d+\.\d{4} lse_d=\d+\.\d{4} offset=-?\d+$")


@pytest.fixture(scope="module")
def server(audio_lip_server):
    return audio_lip_server


@pytest.fixture(scope="module")
def dataset(audio_lip_dataset):
    return audio_lip_dataset


@pytest.fixture(scope="module")
def trained(audio_lip_trained):
    return audio_lip_trained


def test_train_audio_tracks_registers_and_makes_the_first_versions_champion(trained, server, capsys):
    rc, _, _ = trained
    assert rc == 0
    c = tracking.client(server.url)
    for name in (AUDIO_LIP_MODEL, SCORER_MODEL):
        vs = registry.versions(server.url, name)
        assert [v.version for v in vs] == [1] and vs[0].aliases == [registry.CHAMPION], vs
        run = c.get_run(vs[0].run_id)
        assert run.info.status == "FINISHED" and run.data.tags["parley.kind"] == "audio-lip"
        assert run.data.params["preset"] == "tiny" and len(run.data.params["dataset_version"]) == 12
    run_id = registry.versions(server.url, SCORER_MODEL)[0].run_id
    m = c.get_run(run_id).data.metrics
    # losses per epoch, held-out metrics of all three models, and the time each took
    assert {"lae_loss", "encoder_loss", "scorer_loss", "swap_l1", "retrieval_top1", "lae_s", "scorer_s"} <= set(m)
    assert 0 <= m["retrieval_top1"] <= 1 and m["swap_l1"] > 0
    assert len(c.get_metric_history(run_id, "lae_loss")) == 3  # the tiny preset's 3 epochs
    split = c.download_artifacts(run_id, "split.json")
    assert "val_clips" in Path(split).read_text()
    # both files are the checkpoints a render or an evaluation reads (tensors only)
    dst = server.artifacts.parent / "fetched"
    path, info = registry.fetch_checkpoint(server.url, f"models:/{AUDIO_LIP_MODEL}@champion", dst,
                                           reader=load_audio_lip)
    assert load_audio_lip(path).template.shape == (68, 2) and info.version == 1
    spath, _ = registry.fetch_checkpoint(server.url, f"models:/{SCORER_MODEL}/1", dst / "s", reader=load_scorer)
    assert load_scorer(spath)[1]["val_clips"]


def test_sync_score_uses_the_champion_right_after_training(trained, server, capsys):
    assert trained[0] == 0
    capsys.readouterr()
    assert main(["sync-score", str(CLIP), "--tracking-uri", server.url]) == 0
    out, err = capsys.readouterr()
    assert LAST_LINE.match(out.strip().splitlines()[-1]), out
    assert "lip-sync-scorer version 1" in err


def test_a_second_training_run_adds_versions_without_moving_the_champion(trained, server, capsys):
    rc, args, _ = trained
    assert rc == 0 and main(args) == 0
    vs = registry.versions(server.url, SCORER_MODEL)
    assert [v.version for v in vs] == [2, 1] and vs[1].aliases == [registry.CHAMPION] and not vs[0].aliases
    assert main(["registry", "promote", "--model", SCORER_MODEL, "--version", "2", "--tracking-uri",
                 server.url]) == 0
    assert registry.versions(server.url, SCORER_MODEL)[0].aliases == [registry.CHAMPION]
    listed = {r["name"] for r in registry.list_models(server.url)}
    assert {AUDIO_LIP_MODEL, SCORER_MODEL} <= listed


def test_sync_score_errors_name_the_fix(tmp_path, capsys, trained):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["sync-score", str(CLIP), "--tracking-uri", empty]) == 2
    assert "parley train-audio" in capsys.readouterr().err
    assert main(["sync-score", str(tmp_path / "missing.mp4"), "--tracking-uri", empty]) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"x")
    assert main(["sync-score", str(CLIP), "--checkpoint", str(junk)]) == 2
    assert "junk.pt: not a readable checkpoint" in capsys.readouterr().err
    assert main(["train-audio", "--dataset", str(tmp_path / "nothing"), "--tracking-uri", empty]) == 2
    assert "nothing" in capsys.readouterr().err


def test_evaluate_scores_prediction_and_ground_truth_with_the_registered_scorer(dataset, trained, server, tmp_path,
                                                                               capsys):
    from jobs.train import TrainJob, train_identity

    assert trained[0] == 0
    run = tmp_path / "run"
    train_identity(TrainJob(dataset=str(dataset), identity="RD_Radio2_000", output=run, preset="debug",
                            evaluate=False))
    out = tmp_path / "eval"
    assert main(["evaluate", "-c", str(run / "checkpoint.pt"), "-d", str(dataset), "-o", str(out),
                 "--sync-model", f"models:/{SCORER_MODEL}/1", "--tracking-uri", server.url]) == 0
    ev = json.loads((out / "eval.json").read_text())
    m = ev["metrics"]
    # six held-out frames: the ground truth is scored at offsets -3..3; the debug preset's 22 steps at 64 px
    # rarely render a face MediaPipe finds, and then the prediction's score is left out with a note, not invented
    assert {"lse_c_gt", "lse_d_gt", "sync_offset_gt", "cpbd", "cpbd_gt"} <= set(m)
    assert m["sync_max_offset"] == 3 and abs(m["sync_offset_gt"]) <= 3 and 0 <= m["cpbd_gt"] <= 1
    err = capsys.readouterr().err
    assert "lse_c" in m or "no lip-sync score of the pred frames (only 0 frames show a mouth" in err
    assert f"{SCORER_MODEL} version 1" in ev["protocol"]["sync_scorer"] and ev["protocol"]["doc"]
    # asking for a scorer that is not there is an error, not a silent omission
    assert main(["evaluate", "-c", str(run / "checkpoint.pt"), "-d", str(dataset), "-o", str(tmp_path / "e2"),
                 "--sync-model", f"models:/{SCORER_MODEL}/9", "--tracking-uri", server.url]) == 2
    assert "has no version 9" in capsys.readouterr().err


def test_radnerf_takes_the_registered_audio_encoder_and_records_its_version(dataset, trained, server, tmp_path,
                                                                           capsys):
    import torch

    from jobs.train import TrainJob, train_identity
    from nerf.checkpoint import load_checkpoint
    from nerf.config import config_from_json

    assert trained[0] == 0
    out = tmp_path / "run"
    result = train_identity(TrainJob(dataset=str(dataset), identity="RD_Radio2_000", output=out, preset="debug",
                                     evaluate=False, audio_source=f"models:/{AUDIO_LIP_MODEL}@champion",
                                     tracking_uri=server.url))
    # the alias is pinned to the version used, in the result and in the checkpoint's recipe
    assert result["audio_lip_model"] == f"models:/{AUDIO_LIP_MODEL}/1"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert config_from_json(ckpt["config"]).model.head.audio.source == f"models:/{AUDIO_LIP_MODEL}/1"
    # the head's audio net is the registered encoder, fine-tuned at lr_audio (5e-6): 22 steps barely move it
    path, _ = registry.fetch_checkpoint(server.url, f"models:/{AUDIO_LIP_MODEL}/1", tmp_path / "al",
                                        reader=load_audio_lip)
    enc = load_audio_lip(path).encoder.state_dict()
    got = {k.removeprefix("head.audio_net."): v for k, v in ckpt["model"].items() if k.startswith("head.audio_net.")}
    assert set(got) == set(enc)
    assert max(float((got[k] - enc[k]).abs().max()) for k in enc) < 1e-3
    assert any(not torch.equal(got[k], enc[k]) for k in enc)  # trained, not only copied
    # an unknown version is a clear error from the command line, before any training
    rc = main(["train", "-d", str(dataset), "--identity", "RD_Radio2_000", "--output", str(tmp_path / "r2"),
               "--preset", "debug", "--audio-source", f"models:/{AUDIO_LIP_MODEL}/7", "--tracking-uri", server.url])
    assert rc == 2 and "has no version 7" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "checkpoint.pt").exists()
