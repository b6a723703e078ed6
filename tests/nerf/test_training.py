"""The RAD-NeRF model and trainer on a small real dataset: presets, stages, checkpoints, occupancy, bad inputs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.train import load_identity, lpips_module
from nerf.checkpoint import CheckpointError
from nerf.config import ExperimentConfig, config_from_json, config_to_json
from nerf.data import DataError, IdentityFrames
from nerf.methods import preset
from nerf.metrics import psnr
from nerf.radnerf.presets import PRESETS
from nerf.rays import ErrorMap, FrameStore
from nerf.rendering import OccupancyGrid, OccupancyGridConfig, SamplerConfig, box_intersection, sample_rays
from nerf.trainer import Trainer
from tests.conftest import ROOT, SHARED
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.helpers import with_steps as _steps


@pytest.fixture(scope="module")
def lpips():
    """The LPIPS module (AlexNet weights from ../shared/assets)."""
    return lpips_module()


@pytest.fixture(scope="module")
def frames64(small_dataset) -> IdentityFrames:
    """The small dataset's identity at 64 px."""
    return load_identity(str(small_dataset), IDENTITY, 64)


def test_frames_split_and_shapes(frames64):
    """The last ~1/11 of the frames are held out; arrays have the training size; eye ~1 when open."""
    d = frames64
    assert d.n_frames == 30 and d.n_train == 27 and list(d.val_ids) == [27, 28, 29]
    assert d.images.shape == (30, 64, 64, 3) and d.labels.shape == (30, 64, 64) and d.background.shape == (64, 64, 3)
    assert d.audio.shape == (30, 16, 80) and np.abs(d.audio).sum() > 0
    assert 0.5 < float(np.median(d.eye)) < 1.2
    assert (d.intrinsics[:, 0] > 50).all() and (d.face_rect[:, 2] > d.face_rect[:, 0]).all()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_two_steps(small_dataset, name):
    """Each preset (its real model and batch size) takes two head steps on CPU with a finite, changing loss."""
    cfg = _steps(preset(name), head=2)
    data = load_identity(str(small_dataset), IDENTITY, cfg.trainer.size)
    tr = Trainer(cfg, data)
    before = [p.detach().clone() for p in tr.model.head.parameters()]
    results = [tr.step(), tr.step()]
    assert all(r is not None and np.isfinite(r.loss) and r.samples > 0 for r in results)
    assert tr.step() is None and tr.done
    changed = sum(not torch.equal(a, b) for a, b in zip(before, tr.model.head.parameters(), strict=True))
    assert changed > 0


def test_debug_runs_all_stages(frames64, lpips, tmp_path):
    """The debug preset goes head -> lips -> torso; the lips stage adds LPIPS; the torso stage trains only the
    torso; the final render has torso pixels in front of the background."""
    cfg = preset("debug")
    tr = Trainer(cfg, frames64, lpips=lpips)
    seen: dict[str, list] = {}
    head_before = None
    while (r := tr.step()) is not None:
        seen.setdefault(r.stage, []).append(r)
        if r.stage == "lips" and r.step == cfg.trainer.lips.steps:
            head_before = [p.detach().clone() for p in tr.model.head.parameters()]
    assert [len(seen[s]) for s in ("head", "lips", "torso")] == [12, 4, 6]
    assert "lips_lpips" in seen["lips"][0].losses and seen["lips"][0].losses["lips_lpips"] > 0
    assert "torso_entropy" in seen["torso"][0].losses and seen["torso"][0].losses["torso_mask"] > 0
    assert seen["head"][0].losses["head_mask"] > 0 and "head_mask" not in seen["torso"][0].losses
    assert head_before is not None
    assert all(torch.equal(a, b) for a, b in zip(head_before, tr.model.head.parameters(), strict=True))
    img = tr.render_frame(int(frames64.val_ids[0]))
    assert img.shape == (64, 64, 3) and torch.isfinite(img).all()


@pytest.mark.parametrize("error_map", [0, 16])
def test_checkpoint_resumes_to_the_same_loss(frames64, lpips, tmp_path, error_map):
    """A checkpoint saved mid-stage (weights_only-loadable) resumes to exactly the loss of the uninterrupted run
    (with an error map too: it is part of the state that picks the next rays)."""
    cfg = preset("debug")
    cfg = replace(cfg, trainer=replace(cfg.trainer, error_map=error_map))
    a = Trainer(cfg, frames64, lpips=lpips)
    for _ in range(7):  # mid head stage, after occupancy updates
        a.step()
    path = a.save_checkpoint(tmp_path / "ck.pt")
    ck = torch.load(path, weights_only=True)
    assert ck["stage"] == "head" and ck["stage_step"] == 7 and config_from_json(ck["config"]) == cfg
    expected = [a.step().loss for _ in range(8)]  # crosses into the lips stage
    b = Trainer(cfg, frames64, lpips=lpips)
    b.load_checkpoint(path)
    got = [b.step().loss for _ in range(8)]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert b.stage == a.stage and b.global_step == a.global_step == 15


def test_the_seed_makes_training_reproducible(frames64, lpips):
    """Two trainers with one seed start from the same weights and train every stage to the same losses and weights
    (whatever the global RNG did in between); another seed starts elsewhere."""
    cfg = preset("debug")

    def run(seed: int) -> tuple[dict[str, torch.Tensor], list[float], dict[str, torch.Tensor]]:
        torch.rand(int(torch.randint(1, 50, ()).item()))  # the global RNG moves on between runs
        t = Trainer(replace(cfg, trainer=replace(cfg.trainer, seed=seed)), frames64, lpips=lpips)
        init = {k: v.clone() for k, v in t.model.state_dict().items()}
        losses = []
        while (r := t.step()) is not None:
            losses.append(r.loss)
        return init, losses, t.model.state_dict()

    init_a, losses_a, end_a = run(0)
    init_b, losses_b, end_b = run(0)
    tc = cfg.trainer
    assert len(losses_a) == tc.head.steps + tc.lips.steps + tc.torso.steps
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert losses_a == losses_b
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)
    init_c, losses_c, _ = run(1)
    assert not all(torch.equal(init_a[k], init_c[k]) for k in init_a)
    assert losses_c != losses_a


def test_checkpoint_errors(frames64, lpips, tmp_path):
    """Missing, corrupt, foreign and other-recipe checkpoints raise CheckpointError naming the file."""
    tr = Trainer(preset("debug"), frames64, lpips=lpips)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        tr.load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        tr.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a parley checkpoint"):
        tr.load_checkpoint(foreign)
    unknown = ("parley-nomethod/1", "no method 'nomethod'")
    for fmt, why in (unknown, ("parley-radnerf/9", "format version 9; this parley reads 2, 1")):
        torch.save({"format": fmt}, foreign)
        with pytest.raises(CheckpointError, match=why):
            tr.load_checkpoint(foreign)
    other = Trainer(_steps(preset("debug"), head=3), frames64, lpips=lpips)
    other.step()
    path = other.save_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="another config"):
        tr.load_checkpoint(path)


def test_checkpoint_from_before_a_config_field_loads(frames64, lpips, tmp_path):
    """A checkpoint written before a config field existed (its JSON lacks the key) loads: the field's default stands
    in. A config that does not parse is a CheckpointError naming the file."""
    import json

    a = Trainer(preset("debug"), frames64, lpips=lpips)
    a.step()
    ck = a.state_dict()
    cfg = json.loads(ck["config"])
    del cfg["model"]["torso"]["pose_in_color"]  # added after the first checkpoints were written
    assert preset("debug").model.torso.pose_in_color is True
    del cfg["method"]  # format 1, before there were several methods
    ck["config"], ck["format"] = json.dumps(cfg), "parley-radnerf/1"
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    b = Trainer(preset("debug"), frames64, lpips=lpips)
    b.load_checkpoint(old)
    assert b.global_step == 1
    b.step()
    assert b.save_checkpoint(tmp_path / "new.pt") and torch.load(tmp_path / "new.pt")["format"] == "parley-radnerf/2"
    # fields whose default changed the model: their absence means the old behaviour, not today's default
    old_cfg = preset("debug")
    old_head = replace(old_cfg.model.head, latent_in_density=False, view_degree=0)
    old_cfg = replace(old_cfg, model=replace(old_cfg.model, head=old_head,
                                             losses=replace(old_cfg.model.losses, ambient_region="face"),
                                             pose_refine=False, pose_borrow="nearest"))
    c = Trainer(old_cfg, frames64, lpips=lpips)
    c.step()
    ck2 = c.state_dict()
    cfg2 = json.loads(ck2["config"])
    del cfg2["model"]["head"]["latent_in_density"], cfg2["model"]["losses"]["ambient_region"]
    del cfg2["model"]["head"]["view_degree"]
    del cfg2["model"]["pose_refine"], cfg2["model"]["pose_borrow"]
    for stage in ("head", "lips", "torso"):
        del cfg2["trainer"][stage]["lr_pose"]
    ck2["config"] = json.dumps(cfg2)
    torch.save(ck2, tmp_path / "older.pt")
    parsed = config_from_json(ck2["config"])
    assert parsed.model.head.latent_in_density is False and parsed.model.losses.ambient_region == "face"
    assert parsed.model.head.view_degree == 0 and preset("debug").model.head.view_degree == 2
    assert parsed.model.pose_refine is False and "pose_deltas" not in ck2["model"]
    assert parsed.model.pose_borrow == "nearest"
    assert preset("debug").model.head.latent_in_density is True
    d = Trainer(parsed, frames64, lpips=lpips)
    d.load_checkpoint(tmp_path / "older.pt")
    assert d.global_step == 1
    cfg["model"]["torso"]["bogus"] = 1
    ck["config"] = json.dumps(cfg)
    torch.save(ck, old)
    with pytest.raises(CheckpointError, match="old.pt: its config does not parse.*bogus"):
        b.load_checkpoint(old)


def test_config_json_round_trip():
    """Every preset survives JSON; unknown keys are named."""
    for name in PRESETS:
        cfg = preset(name)
        assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        config_from_json('{"name": "x", "bogus": 1}')
    with pytest.raises(KeyError, match="presets: debug, cpu, paper"):
        preset("nope")
    from nerf.radnerf.config import RadNerfStage as StageConfig

    with pytest.raises(ValueError, match=r"invalid lr_pose=-0.001, lr_final=0 \(steps and learning rates"):
        StageConfig(steps=10, lr_pose=-1e-3, lr_final=0)
    from nerf.radnerf.config import LossWeights

    with pytest.raises(ValueError, match=r"loss weights: invalid head_mask=nan, grid_tv=-1.0 \(weights must be >= 0"):
        LossWeights(grid_tv=-1.0, head_mask=float("nan"))
    with pytest.raises(ValueError, match="invalid steps=-1"):
        config_from_json(config_to_json(preset("debug")).replace('"steps": 12', '"steps": -1'))
    from nerf.radnerf.config import RadNerfConfig

    with pytest.raises(ValueError, match="pose_borrow must be 'mean' or 'nearest', got 'latest'"):
        RadNerfConfig(pose_borrow="latest")  # type: ignore[arg-type]


def _head_shell_density(x: torch.Tensor, verts: torch.Tensor, radius: float = 0.01) -> torch.Tensor:
    """Density 500 within ``radius`` of the ICT head mesh vertices, 0 elsewhere."""
    d = torch.cdist(x, verts).amin(1)
    return torch.where(d < radius, torch.full_like(d, 500.0), torch.zeros_like(d))


def test_occupancy_grid_prunes_empty_space_and_keeps_the_head(frames64):
    """With a density living on the real head surface, the grid keeps every surface cell, empties most of the
    box, and rays through the face get <= 16 samples on the head while rays past it get none."""
    mesh = np.load(SHARED / "assets" / "ict_face_model_light.npz")
    verts = torch.from_numpy(mesh["mean"][::7] * 0.01).float()  # metres
    grid = OccupancyGrid(OccupancyGridConfig(resolution=48), bound=0.2)
    grid.update(lambda x: _head_shell_density(x, verts), torch.Generator().manual_seed(0))
    assert grid.occupied(verts).float().mean() > 0.98
    assert grid.occupancy() < 0.15
    corners = torch.tensor([[0.19, 0.19, 0.19], [-0.19, -0.19, -0.19], [0.19, -0.19, -0.19]])
    assert not grid.occupied(corners).any()

    store = FrameStore(frames64)
    rays = store.frame_rays(0)
    s = sample_rays(rays.origins, rays.directions, frames64.near, frames64.far, grid, SamplerConfig(), None)
    assert s.t.shape[1] == 16
    fr = frames64.face_rect[0]
    px = rays.pixels[s.ray]
    in_face = (px[:, 0] > fr[0]) & (px[:, 0] < fr[2]) & (px[:, 1] > fr[1]) & (px[:, 1] < fr[3])
    assert in_face.sum() >= 0.8 * ((fr[2] - fr[0]) * (fr[3] - fr[1]))  # face pixels (rect padded 10%) keep samples
    assert s.ray.shape[0] < 0.6 * rays.origins.shape[0]  # many rays are skipped entirely
    on_head = grid.occupied(s.points.reshape(-1, 3))
    # samples sit in occupied cells (a few spill into neighbours: candidate steps are ~cell-sized)
    assert on_head.float().mean() > 0.85


def test_occupied_along_rays_is_the_pointwise_test():
    """The stepped test of :func:`sample_rays` (grid units, int32) finds the same cells as :meth:`occupied` on the
    points themselves, for rays in every direction through a random grid, save points within float rounding of a
    cell border."""
    gen = torch.Generator().manual_seed(3)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32), bound=0.2)
    grid.mask.copy_(torch.rand(grid.mask.shape, generator=gen) < 0.3)
    o = torch.randn(2000, 3, generator=gen)
    o = o / o.norm(dim=-1, keepdim=True) * 0.6  # outside the box
    d = F.normalize(torch.randn(2000, 3, generator=gen) * 0.1 - o, dim=-1)  # towards it, some past it
    t_in, t_out = box_intersection(o, d, grid.bound)
    hit = t_out > t_in
    o, d, t_in, t_out = o[hit], d[hit], t_in[hit], t_out[hit]
    assert o.shape[0] > 1000
    m = 64
    step = (t_out - t_in) / m
    along = grid.occupied_along(o, d, t_in + 0.5 * step, step, m)
    t = t_in[:, None] + (torch.arange(m) + 0.5) * step[:, None]
    x = (o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3)
    pointwise = grid.occupied(x).view(-1, m)
    u = (x / grid.bound + 1) * 0.5 * grid.config.resolution
    clear = ((u - u.round()).abs() > 1e-4).all(-1).view(-1, m)  # not on a cell border
    assert clear.float().mean() > 0.99
    assert torch.equal(along[clear], pointwise[clear])
    assert 0.2 < along.float().mean() < 0.4  # both occupied and free cells were crossed


def test_bad_dataset_inputs(small_dataset, tmp_path):
    """A missing identity names the known ones; an empty folder is not a dataset; frames without faces are an
    error naming the identity."""
    with pytest.raises(KeyError, match="no identity 'nobody'.*RD_Radio2_000"):
        load_identity(str(small_dataset), "nobody", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        load_identity(str(tmp_path / "empty"), IDENTITY, 64)
    from pipelines.dataset import Dataset

    ds = Dataset(str(small_dataset))
    frames = ds.frames(IDENTITY)
    faceless = frames.set_column(frames.schema.get_field_index("face_found"), "face_found",
                                 __import__("pyarrow").array([False] * frames.num_rows))
    with pytest.raises(DataError, match="none with a face"):
        IdentityFrames.from_rows(faceless, ds.identity(IDENTITY), 64)
    with pytest.raises(DataError, match="no background"):
        IdentityFrames.from_rows(frames, {**ds.identity(IDENTITY), "background_png": None}, 64)


def test_nerf_imports_no_ray_mlflow_or_workers():
    """nerf/ reads pipelines.schema only: importing all of it loads no ray, mlflow, workers (but the parsing labels
    and the 6-D pose helpers the schema takes from the dependency-free workers.labels and workers.pose) or other
    pipelines."""
    code = ("import sys, nerf.avatar, nerf.radnerf, nerf.trainer, nerf.metrics, nerf.kernels;"
            "bad = sorted(m for m in sys.modules if (m.split('.')[0] in ('ray', 'mlflow', 'workers') and "
            "m not in ('workers', 'workers.labels', 'workers.pose')) or "
            "(m.startswith('pipelines.') and m != 'pipelines.schema'));"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_train_stage_steps_zero_skips(frames64):
    """A stage with 0 steps is skipped; the lips stage without an LPIPS module is refused up front."""
    tr = Trainer(_steps(preset("debug"), head=1, lips=0, torso=1), frames64)
    stages = [tr.step().stage, tr.step().stage]
    assert stages == ["head", "torso"] and tr.step() is None
    with pytest.raises(ValueError, match="radnerf with this recipe needs an LPIPS module"):
        Trainer(_steps(preset("debug"), head=1, lips=1), frames64)


def test_error_map_draws_rays_where_the_error_is():
    """Cells are drawn in proportion to their error, positions fall inside the drawn cells, and an update blends a
    ray's error into its own frame's cell only."""
    em = ErrorMap(n_frames=3, side=4, size=64)
    em.values.zero_()
    em.values[1, 5] = 3.0  # cell (x=1, y=1): pixels [16, 32)
    em.values[1, 14] = 1.0  # cell (x=2, y=3): x [32, 48), y [48, 64)
    g = torch.Generator().manual_seed(0)
    pix = em.sample(torch.tensor([1]), 4000, g)
    in_a = ((pix[:, 0] // 16 == 1) & (pix[:, 1] // 16 == 1)).float().mean()
    in_b = ((pix[:, 0] // 16 == 2) & (pix[:, 1] // 16 == 3)).float().mean()
    assert float(in_a + in_b) == 1.0 and 0.72 < float(in_a) < 0.78
    em.reset()
    em.update(torch.tensor([2, 2]), torch.tensor([[0.5, 0.5], [63.5, 63.5]]), torch.tensor([0.2, 0.0]))
    assert float(em.values[2, 0]) == pytest.approx(0.1 + 0.9 * 0.2, rel=1e-3)  # half precision
    assert float(em.values[2, 15]) == pytest.approx(0.1, rel=1e-3)
    assert bool((em.values[:2] == 1).all()) and int((em.values[2] != 1).sum()) == 2
    with pytest.raises(ValueError, match="error map side"):
        ErrorMap(1, side=128, size=64)


def test_trainer_error_map_follows_training_frames_only(frames64):
    """With ``trainer.error_map`` the head stage's error lands in the training frames' maps (held-out frames are
    never drawn), a new stage starts from a fresh map, and a share that leaves no room is refused."""
    cfg = _steps(preset("debug"), head=6, torso=1)
    cfg = replace(cfg, trainer=replace(cfg.trainer, error_map=16, error_fraction=0.5))
    tr = Trainer(cfg, frames64)
    assert tr.error_map is not None
    for _ in range(6):
        tr.step()
    n = frames64.n_train
    seen = tr.error_map.values[:n] != 1
    assert int(seen.sum()) > 100 and float(tr.error_map.values[:n][seen].max()) < 1.0
    assert bool((tr.error_map.values[n:] == 1).all())
    assert tr.step().stage == "torso" and int((tr.error_map.values != 1).sum()) < int(seen.sum())
    with pytest.raises(ValueError, match="sum to at most 1"):
        replace(cfg.trainer, face_fraction=0.6, error_fraction=0.5)
    with pytest.raises(ValueError, match="error_map=80"):
        replace(cfg.trainer, error_map=80)


def test_resize_stage_refits_the_learning_rate_decay(frames64):
    """A running stage resized mid-way ends at lr_final after the new count; a later stage takes its new count;
    a finished stage, or fewer steps than done, is refused."""
    tr = Trainer(_steps(preset("debug"), head=4, lips=0, torso=2), frames64)
    head = tr.tc.head
    for _ in range(2):
        tr.step()
    lr_mid = tr.optimizer.param_groups[0]["lr"]
    tr.resize_stage("head", 7)
    tr.resize_stage("torso", 3)
    assert tr.optimizer.param_groups[0]["lr"] == lr_mid
    stages = []
    while (r := tr.step()) is not None:
        stages.append(r.stage)
        if r.stage == "head" and r.step == 7:
            assert r.lr == pytest.approx(head.lr_grid * head.lr_final, rel=1e-6)
            assert 0 < r.lr < lr_mid
    assert stages == ["head"] * 5 + ["torso"] * 3
    assert tr.config.trainer.head.steps == 7 and tr.config.trainer.torso.steps == 3
    with pytest.raises(ValueError, match="cannot give the head stage"):
        tr.resize_stage("head", 9)
    with pytest.raises(ValueError, match="torso step 3"):
        tr.resize_stage("torso", 2)


def test_render_frame_with_another_frames_audio(frames64):
    """``audio_from`` swaps the audio alone: the frame's own id renders the same image; another frame's audio
    reaches the model's conditions with the frame's own eye and pose (the conditions are recorded on the way)."""
    tr = Trainer(_steps(preset("debug"), head=2), frames64)
    while tr.step() is not None:
        pass
    f, other = int(frames64.val_ids[0]), 3
    seen: list[tuple[torch.Tensor, ...]] = []
    real = tr.model.novel_conditions

    def record(audio, eye, poses, near):  # noqa: ANN001, ANN202
        seen.append((audio, eye, poses))
        return real(audio, eye, poses, near)

    tr.model.novel_conditions = record  # type: ignore[method-assign]
    with torch.no_grad():
        own = tr.render_frame(f, head_only=True)
        assert torch.equal(tr.render_frame(f, head_only=True, audio_from=f), own)
        tr.render_frame(f, head_only=True, audio_from=other)
    s = tr.store
    assert torch.equal(seen[0][0], s.audio[[f]]) and torch.equal(seen[2][0], s.audio[[other]])
    assert not torch.equal(s.audio[[f]], s.audio[[other]])
    assert torch.equal(seen[2][1], s.eye[[f]]) and torch.equal(seen[2][2], s.poses[[f]])


def test_torso_mask_loss_values():
    """Binary cross-entropy of torso alpha against the body mask, over valid (non-head) rays only; the ambient loss
    over rays outside the audio region only."""
    from nerf.losses import mask_bce

    alpha = torch.tensor([0.9, 0.1, 0.5, 0.2])
    inside = torch.tensor([True, False, True, False])
    valid = torch.tensor([True, True, False, False])
    assert float(mask_bce(alpha, inside, valid)) == pytest.approx(-np.log(0.9), rel=1e-5)
    assert float(mask_bce(alpha, inside, torch.zeros(4, dtype=torch.bool))) == 0.0
    # masked by weights, not by indexing (no wait for a GPU): rays outside the mask get no gradient
    from nerf.losses import ambient_l1

    a = alpha.clone().requires_grad_(True)
    mask_bce(a, inside, valid).backward()
    assert a.grad is not None and torch.all(a.grad[2:] == 0) and torch.all(a.grad[:2] != 0)
    amb = torch.tensor([0.3, 0.5, 0.7, 0.9])
    assert float(ambient_l1(amb, torch.tensor([True, False, True, False]))) == pytest.approx(0.7)
    assert float(ambient_l1(amb, torch.ones(4, dtype=torch.bool))) == 0.0


def test_held_out_frames_borrow_the_latents_of_their_nearest_training_frames(frames64, lpips):
    """A held-out frame renders with the latent of the training frame just before it in its clip (not the mean over
    all frames, nor over the frames before that one); a frame whose clip has no training frame falls back to the
    mean."""
    from dataclasses import replace

    d = frames64
    assert list(d.nearest_train(29, k=3)) == [26, 25, 24] and list(d.nearest_train(27, k=1)) == [26]
    other = replace(d, clip_ids=d.clip_ids[:-1] + ["another clip"])
    assert other.nearest_train(29).size == 0

    tr = Trainer(preset("debug"), d, lpips=lpips)
    m = tr.model
    with torch.no_grad():
        m.head_latents.zero_()
        m.head_latents[26] = 1.0  # the last training frame, the one nearest the held-out ones
    a, e, p = tr.store.audio[:1], tr.store.eye[:1], tr.store.poses[:1]
    near = torch.from_numpy(d.nearest_train(28))
    assert near.tolist() == [26]
    assert torch.allclose(m.novel_conditions(a, e, p, near).head_latent, torch.ones(1, m.head_latents.shape[1]))
    mean = m.novel_conditions(a, e, p).head_latent
    assert torch.allclose(mean, torch.full_like(mean, 1 / 27))
    # and render_frame takes it: the held-out render changes when (only) that latent changes
    img1 = tr.render_frame(28, use_ema=False)
    with torch.no_grad():
        m.head_latents[:26] = -3.0
    assert torch.equal(img1, tr.render_frame(28, use_ema=False))
    with torch.no_grad():
        m.head_latents[26] = -3.0
    assert not torch.equal(img1, tr.render_frame(28, use_ema=False))
    # benchmarks/experiments/latents.py's knob: with nearest=5 the frames before the nearest one count too
    img5 = tr.render_frame(28, use_ema=False, nearest=5)
    assert torch.equal(img5, tr.render_frame(28, use_ema=False, nearest=5))
    with torch.no_grad():
        m.head_latents[22] = 2.0
    assert not torch.equal(img5, tr.render_frame(28, use_ema=False, nearest=5))


def test_latent_in_density_conditions_the_shape_and_the_occupancy_grid(frames64):
    """With ``latent_in_density`` the frame latent changes the density (off: only the colour), and the occupancy
    grid's update evaluates the density under the training frames' own latents."""
    from nerf.radnerf.fields import HeadField

    torch.manual_seed(0)
    base = preset("debug").model.head
    x = torch.rand(64, 3) * 0.2 - 0.1
    audio = torch.randn(64, base.audio.out_dim)
    eye = torch.rand(64)
    for on in (False, True):
        field = HeadField(replace(base, latent_in_density=on))
        z0, z1 = torch.zeros(64, base.latent_dim), torch.full((64, base.latent_dim), 2.0)
        with torch.no_grad():
            same = torch.equal(field.get_density(x, audio, eye, z0), field.get_density(x, audio, eye, z1))
            assert torch.equal(field.get_density(x, audio, eye), field.get_density(x, audio, eye, z0))
        assert same != on, f"latent_in_density={on}"

    cfg = preset("debug")
    cfg = replace(cfg, model=replace(cfg.model, head=replace(cfg.model.head, latent_in_density=True)))
    tr = Trainer(_steps(cfg, head=1), frames64)
    seen: list[torch.Tensor] = []
    real = tr.model.head.get_density
    tr.model.head.get_density = lambda x, a, e, latent=None: seen.append(latent) or real(x, a, e, latent)
    with torch.no_grad():
        tr.model.head_latents.copy_(torch.arange(frames64.n_frames, dtype=torch.float32)[:, None]
                                    .expand_as(tr.model.head_latents))
    n = tr.store.n_train
    tr.model.update_grid(tr.store.audio[:n], tr.store.eye[:n], tr.generator)
    used = torch.cat(seen)[:, 0]
    assert used.max() < n and len(torch.unique(used)) > 1  # training frames' latents, various ones


def test_view_degree_makes_the_colour_depend_on_the_ray_direction(frames64):
    """With ``view_degree`` the head's colour (not its density) changes with the ray direction, renders and
    trains through the whole model, and asks for the directions; off, the direction is not an input."""
    from nerf.radnerf.fields import HeadField

    torch.manual_seed(0)
    base = replace(preset("debug").model.head, view_degree=3)
    field = HeadField(base)
    x = torch.rand(64, 3) * 0.2 - 0.1
    audio, eye, z = torch.randn(64, base.audio.out_dim), torch.rand(64), torch.zeros(64, base.latent_dim)
    d1 = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        a, b = field.get_outputs(x, audio, eye, z, dirs=d1), field.get_outputs(x, audio, eye, z, dirs=-d1)
    assert torch.equal(a["sigma"], b["sigma"]) and not torch.allclose(a["rgb"], b["rgb"])
    with pytest.raises(ValueError, match="directions"):
        field.get_outputs(x, audio, eye, z)
    off = HeadField(replace(base, view_degree=0))
    assert off.color_net[0].in_features == field.color_net[0].in_features - 9
    assert off.get_outputs(x, audio, eye, z)["rgb"].shape == (64, 3)
    with pytest.raises(ValueError, match="view_degree=5"):
        replace(base, view_degree=5)
    cfg = preset("debug")
    cfg = replace(cfg, model=replace(cfg.model, head=base))
    tr = Trainer(_steps(cfg, head=2), frames64)
    tr.train()
    img = tr.render_frame(28)
    assert img.shape[-1] == 3 and torch.isfinite(img).all()


def test_ambient_loss_region_face_or_mouth(frames64):
    """``ambient_region="mouth"`` leaves the audio coordinate free in the mouth region (lips and jaw) only; the
    face rectangle contains it; an unknown region is refused."""
    from nerf.radnerf.model import RadNerf
    from nerf.rays import mouth_rect

    s = FrameStore(frames64)
    rays = s.frame_rays(0)
    lips = frames64.lips_rect[0]
    assert rays.mouth.any() and rays.face.any()
    assert int(rays.mouth.sum()) < int(rays.face.sum())
    assert not bool((rays.mouth & ~rays.face).sum() > 0.1 * rays.mouth.sum())  # mostly inside the face
    cx, cy = (lips[0] + lips[2]) // 2, (lips[1] + lips[3]) // 2
    assert bool(rays.mouth[cy * s.size + cx])  # the lips' centre
    assert not bool(rays.mouth[(lips[1] - (lips[3] - lips[1])) // 2 * s.size + cx])  # well above the lips (eyes)
    mr = mouth_rect(torch.tensor(lips))
    assert mr[0] < lips[0] and mr[1] < lips[1] and mr[2] > lips[2] and mr[3] > lips[3]

    cfg = preset("debug").model
    n = rays.frame.shape[0]
    outputs = {"rgb": torch.zeros(n, 3), "head_acc": torch.full((n,), 0.5), "ambient": torch.rand(n)}
    for region, inside in (("face", rays.face), ("mouth", rays.mouth)):
        m = RadNerf(replace(cfg, losses=replace(cfg.losses, ambient_region=region, ambient_l1=1.0)),
                    frames64.n_frames, 64, 0.3, 0.8)
        got = float(m.get_loss_dict(outputs, rays.rgb, rays.face, rays.label, "head", rays.mouth)["ambient_l1"])
        assert got == pytest.approx(float(outputs["ambient"][~inside].mean()), rel=1e-6), region
    with pytest.raises(ValueError, match="ambient_region='mouth' needs"):
        m.get_loss_dict(outputs, rays.rgb, rays.face, rays.label, "head")
    bad = RadNerf(replace(cfg, losses=replace(cfg.losses, ambient_region="eyes")), frames64.n_frames, 64, 0.3, 0.8)
    with pytest.raises(ValueError, match="unknown ambient_region 'eyes'"):
        bad.get_loss_dict(outputs, rays.rgb, rays.face, rays.label, "head", rays.mouth)


def test_audio_gate_keeps_audio_to_the_mouth(frames64):
    """``audio_gate`` > 0: the mouth is triangulated from the lips of the training frames (every lips ray passes
    near it), and the audio moves the density near the mouth only, not at the forehead."""
    from dataclasses import replace

    from nerf.rays import pixel_rays

    s = FrameStore(frames64)
    p = s.mouth_point()
    n = s.n_train
    lips = s.lips_rect[:n].float()
    o, d = pixel_rays(s.poses[:n], s.intrinsics[:n], (lips[:, :2] + lips[:, 2:]) / 2)
    v = p - o
    off_ray = (v - (v * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    assert float(off_ray.median()) < 0.01  # metres
    cfg = preset("debug")
    cfg = replace(cfg, model=replace(cfg.model, head=replace(cfg.model.head, audio_gate=0.05)))
    tr = Trainer(_steps(cfg, head=1), frames64)
    head = tr.model.head
    assert torch.allclose(head.mouth_centre, p)
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in head.audio_grid.parameters():
            prm.normal_()  # a trained-looking audio grid (it starts near zero)
        a1, a2 = torch.randn(2, 1, head.audio_net.out_dim).expand(2, 32, -1)
        eye, z = torch.ones(32), torch.zeros(32, cfg.model.head.latent_dim)
        near = p + torch.randn(32, 3) * 0.005
        forehead = p + torch.tensor([0.0, 0.12, 0.0]) + torch.randn(32, 3) * 0.005
        moved = {k: (head.get_density(x, a1, eye, z) - head.get_density(x, a2, eye, z)).abs().max()
                 for k, x in (("near", near), ("forehead", forehead))}
    assert float(moved["near"]) > 1e-4 and float(moved["forehead"]) < 1e-6, moved
    assert not hasattr(Trainer(_steps(preset("debug"), head=1), frames64).model.head, "mouth_centre")


def test_latent_smoothness_pairs_neighbours_and_pulls_them_together(frames64):
    """Pairs are consecutive training frames of one clip (none across clips, gaps or into the held-out frames);
    with ``latent_smooth`` the loss is on, and training moves neighbouring latents less apart than without."""
    from nerf.losses import latent_smoothness

    d = frames64
    pairs = d.train_pairs()
    assert len(pairs) > 0 and (pairs[:, 1] == pairs[:, 0] + 1).all() and pairs.max() < d.n_train
    gap = d.frame_index[pairs[:, 1]].astype(int) - d.frame_index[pairs[:, 0]]
    assert ((gap >= 1) & (gap <= 2)).all()
    split = replace(d, clip_ids=["a"] * 5 + ["b"] * (d.n_frames - 5))
    assert [4, 5] not in split.train_pairs().tolist() and [3, 4] in split.train_pairs().tolist()

    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    assert float(latent_smoothness(z, torch.tensor([[0, 1], [1, 2]]))) == pytest.approx(12.5)

    def spread(weight: float) -> float:
        cfg = preset("debug")
        cfg = replace(cfg, model=replace(cfg.model, losses=replace(cfg.model.losses, latent_smooth=weight)))
        tr = Trainer(_steps(cfg, head=6), d)
        seen = []
        while (r := tr.step()) is not None:
            seen.append("latent_smooth" in r.losses)
        assert all(seen) == (weight > 0)
        return float(latent_smoothness(tr.model.head_latents.detach(), tr.model.latent_pairs))

    assert spread(100.0) < 0.5 * spread(0.0)


def test_grid_tv_smooths_the_stage_planes(frames64):
    """Total variation: zero on a constant plane, the mean squared neighbour difference otherwise; with ``grid_tv``
    the loss is on in the head's stages and off in the torso's, and training leaves the head's planes smoother
    than without."""
    from nerf.encoders import GridEncoderConfig, PlaneEncoder

    enc = PlaneEncoder(2, GridEncoderConfig(n_levels=1, features_per_level=1, base_resolution=4, max_resolution=4))
    with torch.no_grad():
        enc.planes[0].fill_(0.5)
        assert float(enc.total_variation()) == 0.0
        enc.planes[0][0, 0, :, 2:] = 1.5  # a step of 1 between columns 1 and 2: 4 of 12 horizontal pairs
        assert float(enc.total_variation()) == pytest.approx(4 / 12)

    def roughness(weight: float) -> float:
        cfg = preset("debug")
        cfg = replace(cfg, model=replace(cfg.model, losses=replace(cfg.model.losses, grid_tv=weight)))
        tr = Trainer(_steps(cfg, head=8, torso=2), frames64)
        seen = []
        while (r := tr.step()) is not None:
            seen.append(("grid_tv" in r.losses, r.stage))
        assert [on for on, st in seen if st == "head"] == [weight > 0] * 8
        assert [on for on, st in seen if st == "torso"] == [False] * 2
        with torch.no_grad():
            return float(torch.stack([m.total_variation() for m in tr.model.head.modules()
                                      if isinstance(m, PlaneEncoder)]).mean())

    smooth, rough = roughness(10.0), roughness(0.0)
    print(f"head planes' TV: {smooth:.3g} with grid_tv, {rough:.3g} without")
    assert smooth < 0.5 * rough


def _with_pose_refine(cfg: ExperimentConfig, lr: float = 5e-4) -> ExperimentConfig:
    tc = cfg.trainer
    return replace(cfg, model=replace(cfg.model, pose_refine=True),
                   trainer=replace(tc, head=replace(tc.head, lr_pose=lr), lips=replace(tc.lips, lr_pose=lr)))


def test_pose_smooth_keeps_neighbouring_frames_corrections_together(frames64):
    """With ``pose_smooth`` the loss is on in the head's stages (not the torso's) and consecutive training frames'
    pose corrections end closer together than without; without ``pose_refine`` it adds nothing."""
    from nerf.losses import latent_smoothness

    def spread(weight: float, refine: bool = True) -> float:
        cfg = preset("debug")
        cfg = replace(cfg, model=replace(cfg.model, losses=replace(cfg.model.losses, pose_smooth=weight)))
        tr = Trainer(_steps(_with_pose_refine(cfg, lr=5e-3) if refine else cfg, head=10, torso=2), frames64)
        seen = []
        while (r := tr.step()) is not None:
            seen.append(("pose_smooth" in r.losses, r.stage))
        assert [on for on, st in seen if st == "head"] == [weight > 0 and refine] * 10
        assert [on for on, st in seen if st == "torso"] == [False] * 2
        if not refine:
            return 0.0
        assert tr.model.pose_deltas is not None
        return float(latent_smoothness(tr.model.pose_deltas.detach(), tr.model.latent_pairs))

    smooth, rough = spread(1e3), spread(0.0)
    print(f"pose corrections' squared neighbour step: {smooth:.3g} with pose_smooth, {rough:.3g} without")
    assert rough > 0 and smooth < 0.5 * rough
    spread(1e3, refine=False)


def test_correct_rays_is_the_rays_of_the_corrected_pose(frames64):
    """Correcting rays by (w, t) equals building them from the pose [exp(w) R | exp(w) T + t]; zero changes nothing."""
    from nerf.radnerf.steps import correct_rays
    from nerf.rays import pixel_rays

    pose = torch.from_numpy(frames64.poses[3]).float()
    intr = torch.from_numpy(frames64.intrinsics[3]).float()
    pix = torch.rand(50, 2) * 64
    o, d = pixel_rays(pose, intr, pix)
    frame = torch.zeros(50, dtype=torch.long)
    o0, d0 = correct_rays(o, d, torch.zeros(1, 6), frame)
    assert torch.equal(o0, o) and torch.equal(d0, d)
    w, t = torch.tensor([0.02, -0.03, 0.05]), torch.tensor([0.004, -0.002, 0.01])
    angle = float(w.norm())
    k = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / angle
    rot = torch.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues
    moved = pose.clone()
    moved[:3, :3] = rot @ pose[:3, :3]
    moved[:3, 3] = rot @ pose[:3, 3] + t
    o1, d1 = pixel_rays(moved, intr, pix)
    o2, d2 = correct_rays(o, d, torch.cat([w, t])[None], frame)
    assert torch.allclose(o1, o2, atol=1e-5) and torch.allclose(d1, d2, atol=1e-5)


def test_pose_refine_learns_training_frames_corrections_and_held_out_frames_borrow_them(frames64, lpips, tmp_path):
    """With ``pose_refine`` the head and lips stages move the corrections of the frames they train on (the torso
    stage and ``lr_pose=0`` leave them), held-out frames take their nearest training frames' corrections, the
    corrections change the render, and checkpoints hold them. Without it the model has none (older checkpoints
    load)."""
    d = frames64
    assert Trainer(_steps(preset("debug"), head=1), d).model.pose_deltas is None

    tr = Trainer(_steps(_with_pose_refine(preset("debug")), head=6, lips=2, torso=2), d, lpips=lpips)
    m = tr.model
    assert m.pose_deltas is not None and not m.pose_deltas.any()
    while tr.stage != "torso":
        tr.step()
    after_head = m.pose_deltas.detach().clone()
    moved = after_head.abs().sum(1) > 0
    assert moved.any() and not moved[d.n_train:].any()  # held-out frames never train
    tr.train()
    assert torch.equal(m.pose_deltas.detach(), after_head)  # the torso stage does not touch the head's poses

    path = tr.save_checkpoint(tmp_path / "ck.pt")
    again = Trainer(tr.config, d, lpips=lpips)
    again.load_checkpoint(path)
    assert torch.equal(again.model.pose_deltas.detach(), after_head)

    fid = torch.tensor([28])
    s = tr.store
    near = torch.from_numpy(d.nearest_train(28))
    assert m.config.pose_borrow == "nearest"  # the default: the nearest training frames' corrections
    cond = m.novel_conditions(s.audio[fid], s.eye[fid], s.poses[fid], near)
    assert torch.allclose(cond.pose_delta, after_head[near].mean(0, keepdim=True))
    own = torch.tensor([3])  # a training frame's pose takes that frame's own correction
    cond = m.novel_conditions(s.audio[fid], s.eye[fid], s.poses[own], near, pose_from=own)
    assert torch.allclose(cond.pose_delta, after_head[own])
    m.config = replace(m.config, pose_borrow="mean")
    cond = m.novel_conditions(s.audio[fid], s.eye[fid], s.poses[fid], near)
    assert torch.allclose(cond.pose_delta, after_head[: d.n_train].mean(0, keepdim=True))
    assert torch.allclose(cond.head_latent, m.head_latents[near].mean(0, keepdim=True))
    m.config = replace(m.config, pose_borrow="nearest")
    img = tr.render_frame(28, use_ema=False, head_only=True)
    with torch.no_grad():
        m.pose_deltas[near, 0] += 0.1
    assert not torch.equal(img, tr.render_frame(28, use_ema=False, head_only=True))

    frozen = Trainer(_steps(_with_pose_refine(preset("debug"), lr=0.0), head=4), d)
    frozen.train()
    assert not frozen.model.pose_deltas.any()


def test_pose_correction_gradient_undoes_a_pose_error(frames64):
    """The photometric loss's gradient moves a frame's correction towards the pose that made its image: a frame
    rendered under a rotated pose is the target, the tracked pose stays, and fitting the correction alone recovers
    most of the rotation."""
    torch.manual_seed(0)
    tr = Trainer(_steps(_with_pose_refine(preset("debug")), head=1), frames64)
    m = tr.model
    with torch.no_grad():  # a textured head: random feature planes (the fresh model is nearly uniform)
        for p in m.head.parameters():
            p.normal_(0.0, 0.5)
    truth = torch.tensor([0.0, 0.03, 0.0, 0.0, 0.0, 0.0])
    s = tr.store
    rays = s.frame_rays(5, head_only=True)
    fr = torch.zeros(rays.origins.shape[0], dtype=torch.long)
    fid = torch.tensor([5])

    def render(delta: torch.Tensor) -> torch.Tensor:
        cond = replace(m.train_conditions(fid, s.audio[fid], s.eye[fid], s.poses[fid]), pose_delta=delta[None])
        return m.get_outputs(rays.origins, rays.directions, rays.pixels, fr, cond, rays.background,
                             with_torso=False)["rgb"]

    with torch.no_grad():
        target = render(truth)
    delta = torch.zeros(6, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=2e-3)
    losses = []
    for _ in range(100):
        loss = ((render(delta) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0], delta
    assert abs(float(delta.detach()[1]) - 0.03) < 0.006, delta


def test_evaluation_renders_what_the_saved_avatar_renders(frames64, tmp_path):
    """``Trainer.render_frame`` (evaluation) and :class:`nerf.avatar.Avatar` (registered models, rendering jobs)
    give the same image of a training frame: both use the averaged weights, latents and pose corrections included
    (not the live latents with the averaged field)."""
    from nerf.avatar import Avatar

    tr = Trainer(_steps(_with_pose_refine(preset("debug")), head=8, lips=0, torso=4), frames64)
    tr.train()
    with torch.no_grad():  # live weights far from the averages (a few debug steps barely move the latents)
        tr.model.head_latents.add_(1.0)
        tr.model.torso_latents.add_(1.0)
        tr.model.pose_deltas.add_(0.05)
    path = tr.save_checkpoint(tmp_path / "ck.pt")
    avatar = Avatar.from_checkpoint(path)
    frame = int(avatar.driving_frames(1)[0])
    mine = (tr.render_frame(frame).numpy() * 255 + 0.5).astype(np.uint8)
    theirs = next(avatar.render(frames64.audio[frame : frame + 1]))
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1


def test_test_time_pose_alignment_recovers_a_pose_error(frames64):
    """``Trainer.align_pose`` fits a frame's head pose to its image with the field frozen: a frame whose image
    was rendered under a rotated head pose gets most of that rotation back, the aligned render is closer to the
    image, the field is untouched, and ``evaluate(align_poses=True)`` reports the aligned PSNR and the angle."""
    from nerf.avatar import evaluate
    from nerf.trainer import Ema

    torch.manual_seed(0)
    data = replace(frames64, images=frames64.images.copy())
    tr = Trainer(_steps(preset("debug"), head=1), data)
    with torch.no_grad():  # a textured head: random feature planes (the fresh model is nearly uniform)
        for p in tr.model.head.parameters():
            p.normal_(0.0, 0.5)
    tr.ema = Ema(tr.model, 0.99)  # evaluation renders the averaged weights: make them these
    truth = torch.tensor([0.0, 0.03, 0.0, 0.0, 0.0, 0.0])
    for f, delta in ((5, truth), (6, None)):  # frame 5's image under a rotated pose, frame 6's under its own
        img = tr.render_frame(f, head_only=True, pose_delta=delta)
        tr.store.images[f] = (img * 255 + 0.5).to(torch.uint8)
        data.images[f] = tr.store.images[f].cpu().numpy()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}

    al = tr.align_pose(5, steps=100)
    assert abs(float(al.delta[1]) - 0.03) < 0.008, al.delta
    assert 1.0 < al.degrees < 2.5, al.degrees
    gt = torch.from_numpy(data.images[5]).float() / 255
    assert psnr(tr.render_frame(5, head_only=True, pose_delta=al.delta), gt) > \
        psnr(tr.render_frame(5, head_only=True), gt) + 3.0
    after = tr.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "alignment changed the model"
    assert all(p.grad is None for p in tr.model.parameters())

    res = evaluate(tr, frames=np.array([5, 6]), align_poses=True)
    five, six = res.per_frame
    assert five["psnr_aligned"] > five["psnr"] + 1.0 and five["align_deg"] > 1.0
    # nothing to undo: it stays (near) where it was, and so does its PSNR (the evaluation renders the torso too,
    # which the head-only image lacks, so the PSNR itself depends on the fresh torso's initialisation)
    assert six["align_deg"] < 0.3 and abs(six["psnr_aligned"] - six["psnr"]) < 0.05
    assert res.metrics["psnr_aligned"] == pytest.approx((five["psnr_aligned"] + six["psnr_aligned"]) / 2)


def test_ema_applied_and_evaluating_restore_the_model_also_on_error():
    """``Ema.applied`` puts the averaged parameters in for a block and the model's own back after it, and
    ``evaluating`` restores the training mode, also when the block raises (a failed render must not leave a
    trainer training on its averages)."""
    from nerf.rendering import evaluating
    from nerf.trainer import Ema

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ema = Ema(model, 0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    own = model[0].weight.detach().clone()
    average = ema.shadow["0.weight"].clone()
    with ema.applied(model), evaluating(model):
        assert torch.equal(model[0].weight, average) and not model.training
    assert torch.equal(model[0].weight, own) and model.training
    with pytest.raises(RuntimeError, match="boom"), ema.applied(model), evaluating(model):
        raise RuntimeError("boom")
    assert torch.equal(model[0].weight, own) and torch.equal(ema.shadow["0.weight"], average) and model.training


def test_view_gap_is_the_rotation_to_the_nearest_training_view(frames64):
    """``IdentityFrames.view_gap``: 0 for a training frame, and for a held-out frame the angle to the closest
    training head rotation (not the first, not the mean); ``evaluate`` reports it per frame."""
    from nerf.avatar import evaluate

    def turned(deg: float) -> np.ndarray:  # frame 0's pose turned about the vertical axis
        a = np.radians(deg)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        p = frames64.poses[0].astype(np.float64).copy()
        p[:3, :3] = rot @ p[:3, :3]
        return p.astype(np.float32)

    poses = np.stack([turned(0.0)] * frames64.n_frames)
    poses[3] = turned(-4.0)  # the nearest training view of the frame below is this one, 6 degrees away
    first_val = frames64.n_train
    poses[first_val] = turned(-10.0)
    poses[first_val + 1] = turned(0.5)
    data = replace(frames64, poses=poses)
    assert data.view_gap(3) == pytest.approx(0.0, abs=0.02)
    assert data.view_gap(first_val) == pytest.approx(6.0, abs=0.02)
    assert data.view_gap(first_val + 1) == pytest.approx(0.5, abs=0.02)
    tr = Trainer(_steps(preset("debug"), head=1), data)
    res = evaluate(tr, frames=np.array([first_val, first_val + 1]))
    assert [round(r["view_gap_deg"], 1) for r in res.per_frame] == [6.0, 0.5]


def test_early_ray_termination_renders_what_every_sample_renders(frames64):
    """Rendering without gradients marches rays ``march_group`` samples at a time and stops them once their
    transmittance drops below ``stop_transmittance``: with a near-zero threshold it composites exactly as the
    full pass does; on an opaque head it evaluates far fewer samples and every pixel stays within the threshold."""
    tr = Trainer(_steps(preset("debug"), head=2), frames64)
    while tr.step() is not None:
        pass
    model, f = tr.model, int(frames64.val_ids[0])
    evaluated: list[int] = []
    real = model.head.get_outputs

    def counting(x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        evaluated.append(x.shape[0])
        return real(x, *args, **kwargs)

    model.head.get_outputs = counting  # type: ignore[method-assign]

    def render(stop: float, group: int = 4) -> tuple[torch.Tensor, int]:
        model.config = replace(model.config, sampler=replace(model.config.sampler, stop_transmittance=stop,
                                                                   march_group=group))
        evaluated.clear()
        with torch.no_grad():
            img = tr.render_frame(f, head_only=True, use_ema=False)
        return img, sum(evaluated)

    full, n_full = render(0.0)
    for group in (1, 3, 4):
        marched, _ = render(1e-30, group)
        torch.testing.assert_close(marched, full, atol=1e-5, rtol=0)
    # rays of two frames in one call (the march gathers each ray's conditions; a single frame broadcasts its own)
    store, fids = tr.store, torch.tensor([f, 1])
    cond = model.train_conditions(fids, store.audio[fids], store.eye[fids], store.poses[fids])
    r0, r1 = store.frame_rays(f, head_only=True), store.frame_rays(1, head_only=True)
    o, d = torch.cat([r0.origins, r1.origins]), torch.cat([r0.directions, r1.directions])
    ray_frame = torch.arange(2).repeat_interleave(r0.origins.shape[0])
    pair = {}
    for stop in (0.0, 1e-30):
        model.config = replace(model.config, sampler=replace(model.config.sampler, stop_transmittance=stop))
        with torch.no_grad():
            pair[stop] = model.render_head(o, d, ray_frame, cond)["rgb"]
    torch.testing.assert_close(pair[1e-30], pair[0.0], atol=1e-5, rtol=0)
    assert (pair[0.0][: r0.origins.shape[0]] - pair[0.0][r0.origins.shape[0]:]).abs().max() > 1e-3  # two frames
    with torch.no_grad():  # an opaque head: rays saturate within their first samples
        model.head.sigma_net[-1].bias[0] += 10.0
    full, n_full = render(0.0)
    marched, n_marched = render(1e-4, group=2)
    assert (full - marched).abs().max() < 1e-4
    assert n_marched < 0.5 * n_full
    with pytest.raises(ValueError, match="stop_transmittance"):
        SamplerConfig(stop_transmittance=1.0)
    with pytest.raises(ValueError, match="march_group"):
        SamplerConfig(march_group=0)
