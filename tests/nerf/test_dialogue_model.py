"""DialogueNeRF's model on the method contract: two real identities' frames merged into one set, their per-frame
inputs, one network with a code pair per person, the role-gated condition, and the motion forecasters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.dialogue_data import frame_inputs, resolve_people
from jobs.train import load_frames
from nerf.data import PERSON_SEP, DataError, merge_people
from nerf.dialogue.forecast import (
    ForecastConfig,
    Forecaster,
    ForecastTrain,
    Sequences,
    residual_correlation,
    rollout,
    train_forecaster,
)
from nerf.dialogue.model import EXPRESSION, HEAD_POSE, SPEAKING, VOICE, Dialogue
from nerf.methods import preset
from nerf.rays import FrameStore
from nerf.trainer import Trainer
from pipelines.dataset import Dataset
from tests.nerf.helpers import with_steps

pytestmark = pytest.mark.timeout(300)
PEOPLE = ("RD_Radio2_000", "WDA_BobMenendez_000")
SUBJECT = "+".join(PEOPLE)


@pytest.fixture(scope="module")
def frames(two_identity_dataset):
    cfg = preset("debug", "dialogue")
    data = load_frames("dialogue", str(two_identity_dataset), SUBJECT, cfg.trainer.size)
    return data, frame_inputs(str(two_identity_dataset), data)


def recipe():  # the head stage and the torso (no LPIPS module needed)
    return with_steps(preset("debug", "dialogue"), 8, torso=4)


def test_people_merge_into_one_set_training_frames_first(two_identity_dataset, frames):
    data, _ = frames
    singles = [load_frames("radnerf", str(two_identity_dataset), p, 64) for p in PEOPLE]
    assert data.people == PEOPLE and data.n_people == 2
    assert data.n_train == sum(s.n_train for s in singles) and data.n_frames == sum(s.n_frames for s in singles)
    person = data.person_of()
    # training frames of each person in turn, then each person's held-out frames
    assert (person[: singles[0].n_train] == 0).all() and (person[singles[0].n_train : data.n_train] == 1).all()
    assert (person[data.n_train :][: singles[0].n_frames - singles[0].n_train] == 0).all()
    np.testing.assert_array_equal(data.images[data.n_train], singles[0].images[singles[0].n_train])
    assert all(c.startswith(PEOPLE[p] + PERSON_SEP) for c, p in zip(data.clip_ids, person, strict=True))
    # a held-out frame borrows latents from its own person's training frames only
    held = int(data.val_ids[-1])
    assert (person[data.nearest_train(held, 3)] == person[held]).all()
    assert data.near == min(s.near for s in singles) and data.far == max(s.far for s in singles)
    np.testing.assert_allclose(data.depth_bounds, [[s.near, s.far] for s in singles], rtol=1e-6)
    # each frame's rays see its own person's background
    store = FrameStore(data)
    for f in (0, data.n_train - 1):
        rays = store.rays(torch.tensor([f]), torch.tensor([[0, 0]]), head_only=False)
        want = torch.from_numpy(data.all_backgrounds()[person[f], 0, 0]).float() / 255
        assert torch.allclose(rays.background[0], want)
    assert not np.array_equal(data.all_backgrounds()[0], data.all_backgrounds()[1])


def test_frame_inputs_are_each_frames_own(frames):
    data, inputs = frames
    n = data.n_frames
    assert inputs[SPEAKING].shape == (n,) and inputs[EXPRESSION].shape == (n, 57)
    assert inputs[HEAD_POSE].shape == (n, 6) and inputs[VOICE].shape == (n, 2)
    assert np.isfinite(inputs[HEAD_POSE]).all() and float(inputs[EXPRESSION].std(0).max()) > 0.01
    assert float(inputs[VOICE][:, 1].max()) > 0  # RMS of real speech
    # the two people's head poses differ (their own tracks, not one copied)
    person = data.person_of()
    assert abs(inputs[HEAD_POSE][person == 0, 3:].mean(0) - inputs[HEAD_POSE][person == 1, 3:].mean(0)).max() > 1e-3


def test_one_network_for_both_people(frames):
    data, inputs = frames
    cfg = recipe()
    state = Dialogue.prepare(cfg, data, inputs, {})
    assert any(k.startswith("pose_forecaster.") for k in state) and state["pose_stats"].shape == (2, 2, 6)
    trainer = Trainer(cfg, data, pretrained=state)
    model = trainer.model
    assert isinstance(model, Dialogue)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("pose_forecaster.")}
    trainer.train()
    # the forecasters are frozen while the field trains; both people's codes were trained apart
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.allclose(model.shape_codes[0], model.shape_codes[1])
    # each ray is sampled within its own person's depth bounds
    one = torch.zeros(1, dtype=torch.long)
    ends = (0, data.n_train - 1)
    nears = [float(model.ray_bounds(one, model.frame_conditions(trainer.store, f))[0][0]) for f in ends]
    assert nears == pytest.approx(data.depth_bounds[:, 0].tolist())
    c = cfg.model
    assert model.head.density_latent == c.shape_dim + c.frame_latent_dim
    assert model.head_latents.shape == (data.n_frames, c.frame_latent_dim)
    n_params = sum(p.numel() for p in model.parameters())
    codes = sum(p.numel() for p in (model.shape_codes, model.appearance_codes, model.torso_codes))
    assert codes < 0.05 * n_params  # a person costs a few codes, not a network
    for f in (int(data.val_ids[0]), int(data.val_ids[-1])):  # a held-out frame of each person renders
        img = trainer.render_frame(f)
        assert img.shape == (64, 64, 3) and torch.isfinite(img).all()


def test_the_role_picks_the_condition(frames):
    data, inputs = frames
    cfg = recipe()
    trainer = Trainer(cfg, data, pretrained=Dialogue.prepare(cfg, data, inputs, {}))
    trainer.train()
    model = trainer.model
    assert isinstance(model, Dialogue)
    a = torch.rand(2, *model.audio_shape)
    e = torch.randn(2, cfg.model.expression_dim)
    eye, pose = torch.ones(2), torch.eye(4).expand(2, 4, 4)
    with torch.no_grad():
        def feats(speaking: float, audio: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
            cond = model.novel_conditions(audio, eye, pose, person=1, speaking=torch.full((2,), speaking),
                                          expression=expr)
            return model.head_features(cond)

        # a speaker follows its audio, not its expression; a listener the other way round
        assert torch.allclose(feats(1.0, a, e), feats(1.0, a, e.flip(0)))
        assert not torch.allclose(feats(1.0, a, e), feats(1.0, a.flip(0), e))
        assert torch.allclose(feats(0.0, a, e), feats(0.0, a.flip(0), e))
        assert not torch.allclose(feats(0.0, a, e), feats(0.0, a, e.flip(0)))
        # the person picks the codes
        c0 = model.novel_conditions(a, eye, pose, person=0)
        c1 = model.novel_conditions(a, eye, pose, person=1)
        s = cfg.model.shape_dim
        assert torch.equal(c0.head_latent[0, :s], model.shape_codes[0])
        assert torch.equal(c1.head_latent[0, :s], model.shape_codes[1])


def test_bad_inputs(two_identity_dataset, frames):
    data, inputs = frames
    cfg = recipe()
    with pytest.raises(ValueError, match="input expression of shape"):
        Dialogue.prepare(cfg, data, {**inputs, EXPRESSION: inputs[EXPRESSION][:, :10]}, {})
    with pytest.raises(ValueError, match="input voice"):
        Dialogue.prepare(cfg, data, {k: v for k, v in inputs.items() if k != VOICE}, {})
    ds = Dataset(str(two_identity_dataset))
    with pytest.raises(KeyError, match="neither a conversation .*unknown: nobody"):
        resolve_people(ds, f"{PEOPLE[0]}+nobody")
    with pytest.raises(DataError, match="named twice"):
        merge_people([data, data], "twice")
    trainer = Trainer(cfg, data, pretrained=Dialogue.prepare(cfg, data, inputs, {}))
    model = trainer.model
    with pytest.raises(ValueError, match="expression is"):
        model.driving_inputs({EXPRESSION: np.zeros((3, 5))})


def test_the_forecaster_learns_a_rhythm_and_keeps_moving():
    """A state that follows its input's rhythm: the trained forecaster's rollout, driven by new input, follows it
    (correlation) and keeps its spread (neither flat nor drifting off)."""
    rng = np.random.default_rng(0)

    def seq(n: int) -> tuple[np.ndarray, np.ndarray]:
        drive = np.sin(np.arange(n) / 6.0 + rng.uniform(0, 6))
        state = 0.8 * drive + 0.1 * rng.standard_normal(n)
        return drive[:, None].astype(np.float32), state[:, None].astype(np.float32)

    pairs = [seq(200) for _ in range(6)]
    model = train_forecaster(Sequences([p[0] for p in pairs], [p[1] for p in pairs]),
                             ForecastConfig(levels=3, channels=16, dropout=0.0),
                             ForecastTrain(steps=300, batch=16, window=64, lr=3e-3), seed=0)
    drive, truth = seq(300)
    out = rollout([model], lambda t, last: drive[t][None], [truth[:1]], 300, torch.Generator().manual_seed(0),
                  bounds=(np.full((1, 1), -3.0), np.full((1, 1), 3.0)))[:, 0, 0]
    assert np.corrcoef(out, drive[:, 0])[0, 1] > 0.5
    assert 0.5 < out.std() / truth.std() < 2.0
    assert abs(out[-100:].mean()) < 0.5


def test_draws_follow_the_residuals_correlation_in_time():
    """Steps the forecaster cannot explain that persist in time (slow sway) are measured on the training sequences,
    and the rollout's draws carry the same persistence instead of white jitter."""
    rng = np.random.default_rng(0)
    model = Forecaster(1, 1, ForecastConfig(levels=2, channels=8, dropout=0.0)).eval()  # untrained: loc 0, scale 1

    def walk(rho: float, n: int = 400) -> np.ndarray:
        v = np.zeros(n)
        for t in range(1, n):
            v[t] = rho * v[t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal()
        return np.cumsum(v)[:, None].astype(np.float32)

    def measured(rho: float) -> float:
        states = [walk(rho) for _ in range(4)]
        return float(residual_correlation(model, Sequences([np.zeros_like(s) for s in states], states))[0])

    assert measured(0.9) == pytest.approx(0.9, abs=0.06)
    assert measured(0.0) < 0.1

    def lag1_of_steps(rho: float) -> float:
        model.noise_rho.fill_(rho)
        out = rollout([model], lambda t, last: np.zeros((1, 1)), [np.zeros((1, 1))], 600,
                      torch.Generator().manual_seed(1))[:, 0, 0]
        steps = np.diff(out)
        return float(np.corrcoef(steps[1:], steps[:-1])[0, 1])

    assert lag1_of_steps(0.9) > 0.75
    assert abs(lag1_of_steps(0.0)) < 0.15
    state = model.state_dict()
    del state["noise_rho"]  # a checkpoint from before the field: white draws
    model.load_state_dict(state)
    assert float(model.noise_rho[0]) == 0.0


def test_a_new_person_warm_starts_from_the_joint_network(two_identity_dataset, frames, tmp_path):
    from dataclasses import replace

    from jobs.dialogue_data import warm_start_weights
    from jobs.train import TrainJob, train_identity

    base = dict(dataset=str(two_identity_dataset), method="dialogue", preset="debug", evaluate=False)
    prior = train_identity(TrainJob(identity=SUBJECT, output=tmp_path / "joint", **base))
    from nerf.checkpoint import load_checkpoint

    joint = load_checkpoint(prior["checkpoint"])["model"]
    cfg = preset("debug", "dialogue")
    cfg = replace(cfg, model=replace(cfg.model, warm_start=prior["checkpoint"]))
    weights = warm_start_weights(cfg, 1)
    # the shared network as it is; the new person's codes at the mean of the joint network's people's
    assert torch.equal(weights["head.sigma_net.0.weight"], joint["head.sigma_net.0.weight"])
    assert weights["shape_codes"].shape == (1, cfg.model.shape_dim)
    assert torch.allclose(weights["shape_codes"][0], joint["shape_codes"].mean(0), atol=0.05)
    assert not any(k.startswith(("head_latents", "pose_forecaster", "frame_")) for k in weights)
    # a one-person model of RD_Radio2_000 trains from it (the recipe key, as `--set model.warm_start=...`)
    res = train_identity(TrainJob(identity=PEOPLE[0], output=tmp_path / "warm",
                                  overrides={"model.warm_start": prior["checkpoint"]}, **base))
    assert res["steps"] > 0 and load_checkpoint(res["checkpoint"])["model"]["shape_codes"].shape[0] == 1
    # a joint network of another shape is refused, naming what differs
    other = replace(cfg, model=replace(cfg.model, shape_dim=8))
    with pytest.raises(ValueError, match="differs from this recipe's in head, shape_dim"):
        warm_start_weights(other, 1)


def test_pose_metrics_count_nods_and_flag_a_still_head():
    from nerf.dialogue.generate import nods_per_minute, pose_metrics

    fps, n = 25.0, 1500  # a minute
    t = np.arange(n) / fps
    nodding = np.radians(3.0) * np.sin(2 * np.pi * 0.6 * t)  # 0.6 nods a second: 36 a minute
    assert abs(nods_per_minute(nodding, fps) - 36) <= 2
    assert nods_per_minute(np.zeros(n), fps) == 0.0
    truth = np.zeros((n, 6))
    truth[:, 0] = nodding
    still = np.zeros((n, 6))
    m = pose_metrics(still, truth, fps)
    assert m["motion_var_ratio"] < 1e-6 and m["pitch_corr"] == 0.0 and m["nods_per_min"] == 0.0
    assert abs(m["pose_rmse_pitch_deg"] - 3.0 / np.sqrt(2)) < 0.05 and m["pose_rmse_yaw_deg"] == 0.0
    same = pose_metrics(truth, truth, fps)
    assert abs(same["motion_var_ratio"] - 1.0) < 1e-9 and same["pitch_corr"] > 0.999 and same["pose_rmse_deg"] == 0
    with pytest.raises(ValueError, match="must both be"):
        pose_metrics(still[:, :3], truth, fps)
