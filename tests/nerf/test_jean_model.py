"""JEAN's model on the method contract, without a registry: what :meth:`Jean.prepare` builds from an identity's
frames, the two ablations' wiring, and the driving inputs' checks. The audio-lip encoder is a freshly initialised
one (its weights are what a registered version would hand over; tests/jobs/test_jean.py uses a registered one)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from jobs.jean_data import frame_features
from jobs.train import load_identity
from nerf.audio_lip.models import AudioLipConfig, AudioLipEncoder
from nerf.jean.model import Jean
from nerf.methods import preset
from nerf.trainer import Trainer
from tests.conftest import SMALL_IDENTITY
from tests.nerf.helpers import with_steps

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def frames(small_dataset):
    cfg = preset("debug", "jean")
    data = load_identity(str(small_dataset), SMALL_IDENTITY, cfg.trainer.size)
    feats = frame_features(str(small_dataset), SMALL_IDENTITY, data.clip_ids, data.frame_index, "geometric")
    return data, feats


def recipe():  # the head stage alone (no LPIPS module needed)
    return with_steps(preset("debug", "jean"), 6)


def encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    enc = AudioLipEncoder(AudioLipConfig())
    return {f"head.audio_net.{k}": v for k, v in enc.state_dict().items()}


def test_features_align_with_the_frames_and_move(frames):
    data, feats = frames
    assert feats.shape == (data.n_frames, 111) and np.isfinite(feats).all()
    assert float(feats[:, :52].std(0).max()) > 0.01  # blendshapes change over the clip


def test_prepare_trains_the_transformer_and_codes_every_frame(frames):
    data, feats = frames
    cfg = recipe()
    state = Jean.prepare(cfg, data, {"expression_features": feats}, encoder_state())
    codes = state["expression_inputs"]
    assert codes.shape == (data.n_frames, cfg.model.expression.part)
    assert float(codes.std(0).mean()) > 1e-3  # frames get different codes
    assert any(k.startswith("expression.encoder.") for k in state) and "head.audio_net.fc.0.weight" in state
    trainer = Trainer(cfg, data, pretrained=state)
    model = trainer.model
    assert isinstance(model, Jean)
    # a frame's conditions carry its own code, held-out frames too
    f = data.n_frames - 1
    cond = model.frame_conditions(trainer.store, f)
    assert torch.allclose(cond.head_latent[0], codes[f])
    other = model.frame_conditions(trainer.store, f, expression_from=0)
    assert torch.allclose(other.head_latent[0], codes[0])
    # the same features as a driving source give the same codes (one clip: windows as in training)
    drive = model.driving_inputs({"expression_features": feats})["expression"]
    assert torch.allclose(drive, codes, atol=1e-5)


def test_the_ablations_change_what_conditions_the_head(frames):
    data, feats = frames
    base = recipe()
    thin = replace(base, model=replace(base.model, expression_mode="features"))
    state = Jean.prepare(thin, data, {"expression_features": feats}, encoder_state())
    assert state["expression_inputs"].shape == (data.n_frames, 111)
    assert not any(k.startswith("expression.") for k in state)
    trainer = Trainer(thin, data, pretrained=state)
    before = [p.detach().clone() for p in trainer.model.expression_head.parameters()]
    while trainer.stage == "head":
        trainer.step()
    after = list(trainer.model.expression_head.parameters())
    assert before and any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # trained with the head
    no_ssl = replace(base, model=replace(base.model, ssl_audio=False))
    state = Jean.prepare(no_ssl, data, {"expression_features": feats}, encoder_state())
    assert not any(k.startswith("head.audio_net.") for k in state)  # anchored the transformer, then dropped
    model = Trainer(no_ssl, data, pretrained=state).model
    assert type(model.head.audio_net).__name__ == "AudioEncoder"  # RAD-NeRF's own net


def test_bad_inputs(frames):
    data, feats = frames
    cfg = recipe()
    with pytest.raises(ValueError, match="no audio-lip encoder"):
        Jean.prepare(cfg, data, {"expression_features": feats}, {})
    with pytest.raises(ValueError, match="one row of geometric features per frame"):
        Jean.prepare(cfg, data, {"expression_features": feats[:-1]}, encoder_state())
    state = Jean.prepare(cfg, data, {"expression_features": feats}, encoder_state())
    model = Trainer(cfg, data, pretrained=state).model
    with pytest.raises(ValueError, match=r"the model takes \[T>0, 111\]"):
        model.driving_inputs({"expression_features": feats[:, :52]})
    with pytest.raises(ValueError, match="takes expression_features"):
        model.driving_inputs({"landmarks": feats})
    with pytest.raises(ValueError, match="head.latent_dim"):
        replace(cfg.model, head=replace(cfg.model.head, latent_dim=3))


def test_crop_features_train_their_own_encoder_first(small_dataset, frames):
    """``features=crop``: the aligned crops go through a self-supervised encoder trained in prepare, kept in the
    model and applied to a driving source's crops the same way."""
    data, _ = frames
    crops = frame_features(str(small_dataset), SMALL_IDENTITY, data.clip_ids, data.frame_index, "crop")
    assert crops.shape == (data.n_frames, 64 * 64) and crops.max() > 100  # grey values, not yet codes
    base = recipe()
    cfg = replace(base, model=replace(base.model, features="crop"))
    assert cfg.model.expression.features == 64  # the transformer's width follows the feature set
    state = Jean.prepare(cfg, data, {"expression_features": crops}, encoder_state())
    assert any(k.startswith("crop_encoder.encoder.") for k in state)
    assert state["feature_mean"].shape == (64,)
    model = Trainer(cfg, data, pretrained=state).model
    assert isinstance(model, Jean) and model.crop_encoder is not None
    key = next(k for k in state if k.startswith("crop_encoder."))
    assert torch.equal(model.state_dict()[key], state[key])
    model.train()
    assert not model.crop_encoder.training  # frozen like the transformer
    drive = model.driving_inputs({"expression_features": crops})["expression"]
    assert torch.allclose(drive, state["expression_inputs"], atol=1e-4)
    with pytest.raises(ValueError, match=r"the model takes \[T>0, 4096\] \(crop\)"):
        model.driving_inputs({"expression_features": crops[:, :111]})
