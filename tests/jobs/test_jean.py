"""JEAN end to end on the platform: a Tune trial trains it on top of the registered audio-lip encoder and registers
``jean-<identity>``; ``parley render --model ... --expression`` cross-drives it; the bad inputs of the issue.

Real throughout: the session's Ray cluster, an ``mlflow server`` with ``parley train-audio``'s models (the
``audio_lip_*`` fixtures), real clips. The ``debug`` preset trains for seconds, so no figure here is a quality
measure (``benchmarks/jean.py`` measures them).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from jobs import registry
from jobs.cli import main
from jobs.fanout import run_fanout
from jobs.fanout_config import FanoutJob
from tests.conftest import SHARED

pytestmark = pytest.mark.timeout(900)
IDENTITY = "RD_Radio2_000"
OTHER = SHARED / "data" / "clips" / "WDA_BobMenendez_000.mp4"


def _cut(src: Path, dst: Path, seconds: float, audio_only: bool = False) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-t", str(seconds)]
    subprocess.run(cmd + (["-vn"] if audio_only else []) + [str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def fanned(audio_lip_dataset, audio_lip_server, audio_lip_trained, ray_local, tmp_path_factory):
    """One JEAN trial (debug preset) in the audio-lip models' tracking server."""
    assert audio_lip_trained[0] == 0
    work = tmp_path_factory.mktemp("jean")
    job = FanoutJob(dataset=str(audio_lip_dataset), identities=[IDENTITY], method="jean", preset="debug",
                    tracking_uri=audio_lip_server.url, storage=str(work / "tune"), work_root=str(work / "scratch"),
                    cpus_per_trial=1.0, max_concurrent=1, name="jean")
    out = run_fanout(job)
    # the user's next step: make the new version the champion (``parley registry promote --method jean``)
    rc = main(["registry", "promote", "--method", "jean", "--identity", IDENTITY, "--tracking-uri",
               audio_lip_server.url])
    return out, work, rc


def test_a_trial_trains_jean_on_the_registered_encoder_and_registers_it(fanned, audio_lip_server, tmp_path):
    from nerf.checkpoint import load_checkpoint
    from nerf.config import config_from_json

    out, _, promoted = fanned
    assert [t["status"] for t in out["trials"]] == ["done"], out["trials"]
    assert promoted == 0
    versions = registry.versions(audio_lip_server.url, f"jean-{IDENTITY}")
    assert [int(v.version) for v in versions] == [1] and versions[0].tags["method"] == "jean"
    path, _ = registry.fetch_checkpoint(audio_lip_server.url, f"models:/jean-{IDENTITY}@champion", tmp_path)
    ckpt = load_checkpoint(path)
    cfg = config_from_json(ckpt["config"])
    assert ckpt["method"] == "jean" and cfg.model.head.audio.source == "models:/audio-lip/1"
    state = ckpt["model"]
    # the per-identity transformer travels with the field, and every frame has its own expression code
    assert any(k.startswith("expression.encoder.") for k in state)
    codes = state["expression_inputs"]
    assert codes.shape[1] == cfg.model.expression.part and float(codes.std(0).mean()) > 1e-3
    assert "identity_coeffs" in ckpt["render_kit"]


def test_render_cross_drives_from_an_expression_video(fanned, audio_lip_server, tmp_path, capsys, caplog):
    from workers.media import probe

    audio = _cut(SHARED / "data" / "clips" / "WDA_AlexandriaOcasioCortez_000.mp4", tmp_path / "a.wav", 2.0, True)
    same = _cut(SHARED / "data" / "clips" / f"{IDENTITY}.mp4", tmp_path / "b.mp4", 1.0)  # shorter than the audio
    args = ["render", "--model", f"models:/jean-{IDENTITY}@champion", "--tracking-uri", audio_lip_server.url,
            "--audio", str(audio), "--expression", str(same)]
    with caplog.at_level(logging.WARNING, logger="jobs.render"):
        assert main([*args, "--out", str(tmp_path / "x.mp4")]) == 0
    printed = capsys.readouterr().out
    assert "25 frames (shorter than the audio: played back and forth)" in printed
    info = probe(str(tmp_path / "x.mp4"))
    assert abs(info.video_duration_s - 2.0) < 0.1 and info.has_audio
    assert "another person" not in caplog.text
    # another person's face as the expression source: a warning, and the render still goes on
    with caplog.at_level(logging.WARNING, logger="jobs.render"):
        assert main([*args[:-1], str(_cut(OTHER, tmp_path / "o.mp4", 1.0)), "--out", str(tmp_path / "y.mp4")]) == 0
    assert "another person than the avatar's" in caplog.text
    # the pyfunc takes the expression source per row, as render does
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(audio_lip_server.url)
    mlflow.set_registry_uri(audio_lip_server.url)
    pyfunc = mlflow.pyfunc.load_model(f"models:/jean-{IDENTITY}@champion")
    rows = pd.DataFrame({"audio": [str(audio)], "expression": [str(same)], "out": [str(tmp_path / "pf.mp4")]})
    assert pyfunc.predict(rows, params={"size": 32}) == [str(tmp_path / "pf.mp4")]
    info = probe(str(tmp_path / "pf.mp4"))
    assert info.has_audio and (info.width, info.height) == (32, 32) and abs(info.video_duration_s - 2.0) < 0.1


def test_the_expression_code_and_the_audio_both_reach_the_head_field(fanned, audio_lip_server, tmp_path):
    """Wiring, not quality (the debug preset's head is still mostly empty space): at points in the head's box the
    density and colour change with the expression code alone and with the audio alone."""
    import torch

    from nerf.avatar import Avatar

    path, _ = registry.fetch_checkpoint(audio_lip_server.url, f"models:/jean-{IDENTITY}@champion", tmp_path)
    model = Avatar.from_checkpoint(path).model
    head = model.head
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(256, 3, generator=g) * 2 - 1) * head.config.bound * 0.5
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=-1)
    mel = torch.randn(2, 16, 80, generator=g) * 2
    with torch.no_grad():
        audio = head.encode_audio(mel)
        codes = model.expression_of(torch.tensor([0, model.expression_inputs.shape[0] - 1]))  # type: ignore[attr-defined]
        eye = torch.ones(256)

        def field(a: int, e: int) -> torch.Tensor:
            out = head.get_outputs(x, audio[a].expand(256, -1), eye, codes[e].expand(256, -1), dirs=dirs)
            return torch.cat([out["sigma"][:, None], out["rgb"]], -1)

        assert not torch.allclose(field(0, 0), field(0, 1))  # the expression code alone
        assert not torch.allclose(field(0, 0), field(1, 0))  # the audio alone


def test_bad_inputs_are_clear_errors(audio_lip_dataset, audio_lip_server, fanned, tmp_path, capsys):
    from jobs.train import TrainJob, train_identity

    # no audio-lip model in the tracking store: refused before any training, naming what is missing
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    rc = main(["train", "-d", str(audio_lip_dataset), "--identity", IDENTITY, "--output", str(tmp_path / "r"),
               "--method", "jean", "--preset", "debug", "--tracking-uri", empty])
    err = capsys.readouterr().err
    assert rc == 2 and "audio-lip" in err, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    # --expression with a method that takes none
    radnerf = train_identity(TrainJob(dataset=str(audio_lip_dataset), identity=IDENTITY, output=tmp_path / "rn",
                                      preset="debug", evaluate=False))
    audio = _cut(OTHER, tmp_path / "a.wav", 1.0, True)
    rc = main(["render", "--checkpoint", radnerf["checkpoint"], "--audio", str(audio), "--expression", str(OTHER),
               "--out", str(tmp_path / "z.mp4")])
    assert rc == 2 and "takes no expression source" in capsys.readouterr().err
    # an expression "video" that is not one
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    ckpt, _ = registry.fetch_checkpoint(audio_lip_server.url, f"models:/jean-{IDENTITY}@champion", tmp_path / "m")
    rc = main(["render", "--checkpoint", str(ckpt), "--audio", str(audio), "--expression", str(bad),
               "--out", str(tmp_path / "w.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.mp4" in err, err
