"""A second method through the public registry: the test-only plain NeRF (:mod:`tests.nerf.plain_method`) trains,
checkpoints, resumes, evaluates and renders through the same Trainer, ``parley evaluate`` and ``parley render``
paths as RAD-NeRF, with no edit to RAD-NeRF's files."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from jobs import cli
from jobs.train import load_identity
from nerf import methods
from nerf.checkpoint import load_checkpoint
from nerf.trainer import Trainer
from tests.conftest import SHARED
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.helpers import with_steps
from tests.nerf.plain_method import METHOD

WAV = SHARED / "data" / "audio" / "RD_Radio31_000.wav"


@pytest.fixture()
def plain():
    methods.register(METHOD)
    yield METHOD
    methods.unregister(METHOD.name)


def test_the_registry_names_methods_and_refuses_unknown_ones(plain):
    assert {"radnerf", "plain"} <= set(methods.names())
    assert methods.get("radnerf").checkpoint_format == "parley-radnerf/2"
    assert methods.get("radnerf").stages == ("head", "lips", "torso")
    with pytest.raises(KeyError, match="no method 'nope'.*plain.*radnerf"):
        methods.get("nope")
    with pytest.raises(KeyError, match="method plain has no preset 'cpu'.*tiny"):
        methods.preset("cpu", "plain")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Method(name="plain", version=1, model=plain.model, model_config=plain.model_config,
                                        trainer_config=plain.trainer_config, presets=plain.presets,
                                        default_preset="tiny"))
    assert methods.registered_name("radnerf", "bob") == "avatar-bob"
    assert methods.registered_name("plain", "bob") == "plain-bob"
    # a prior's 25 people: a name a registry database holds, distinct per set of people
    many = "+".join(f"person_{k:02d}_with_a_long_manifest_name" for k in range(25))
    other = many.replace("person_24", "person_99")
    name = methods.registered_name("dialogue", many)
    assert len(name) <= methods.MAX_NAME and name.startswith("dialogue-person_00_with_a_long_manifest_name-and-24")
    assert name != methods.registered_name("dialogue", other)
    assert len(methods.registered_name("dialogue", "x" * 400)) <= methods.MAX_NAME


def test_a_second_method_trains_and_resumes_to_the_same_weights(plain, small_dataset, tmp_path):
    """Stopped after 3 steps and resumed from its checkpoint, it ends on the weights of an uninterrupted run; its
    stage, learning rate group and callbacks are its own; the checkpoint says which method it is."""
    cfg = methods.preset(None, "plain")
    data = load_identity(str(small_dataset), IDENTITY, cfg.trainer.size)
    whole = Trainer(cfg, data)
    whole.train()
    assert whole.done and whole.global_step == 8 and whole.model.callback_calls == 8
    assert whole.optimizer.param_groups[0]["initial_lr"] == pytest.approx(5e-3)

    first = Trainer(cfg, data)
    calls = iter(range(100))
    first.train(tmp_path / "ckpt.pt", should_stop=lambda: next(calls) == 2)
    assert first.global_step == 3 and not first.done
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["format"] == "parley-plain/1" and ckpt["method"] == "plain" and ckpt["stage"] == "fit"
    second = Trainer(cfg, data)
    second.load_checkpoint(tmp_path / "ckpt.pt")
    second.train()
    assert second.global_step == 8
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k

    radnerf = Trainer(with_steps(methods.preset("debug"), head=2, lips=0, torso=2), data)
    with pytest.raises(Exception, match="a plain checkpoint, not radnerf"):
        radnerf.load_checkpoint(tmp_path / "ckpt.pt")


def test_a_second_method_through_parley_train_evaluate_and_render(plain, small_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--method", "plain", "--dataset", str(small_dataset), "--identity", IDENTITY,
                     "--output", str(run), "--no-eval"]) == 0
    assert json.loads((run / "config.json").read_text())["method"] == "plain"
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--dataset", str(small_dataset),
                     "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert 5.0 < metrics["psnr"] < 60.0 and metrics["n_frames"] >= 1
    assert (tmp_path / "eval" / "eval_side_by_side.mp4").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--dataset", str(small_dataset),
                     "--output", str(tmp_path / "eval2"), "--align-poses"]) == 2
    assert "the plain method has no pose alignment" in capsys.readouterr().err

    out = tmp_path / "plain.mp4"
    assert cli.main(["render", "--checkpoint", str(run / "checkpoint.pt"), "--audio", str(WAV), "--out", str(out),
                     "--method", "radnerf"]) == 2
    assert "a plain checkpoint, not radnerf" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["render", "--checkpoint", str(run / "checkpoint.pt"), "--audio", str(WAV), "--out", str(out),
                     "--size", "32"]) == 0
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                            "stream=codec_type,nb_read_frames,width", "-of", "json", str(out)],
                           capture_output=True, text=True, check=True)
    streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
    assert int(streams["video"]["nb_read_frames"]) == 200 and streams["video"]["width"] == 32  # 8 s at 25 fps
    assert "audio" in streams
