"""The CUDA code paths, on a machine without a GPU: training, evaluation, resuming and rendering with
``device="cuda"`` under :class:`tests.nerf.fake_cuda.FakeCuda` (a mock device: see its docstring), which reports
what a real GPU would refuse. The kernels themselves are tested on a GPU by tests/nerf/test_encoders.py and
benchmarks/gpu.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from jobs.train import load_identity, lpips_module
from nerf.avatar import Avatar, evaluate
from nerf.methods import preset
from nerf.radnerf.model import RadNerf
from nerf.rendering import default_chunk
from nerf.trainer import Trainer
from tests.conftest import ROOT
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.fake_cuda import FakeCuda
from tests.nerf.helpers import with_steps


def fake() -> FakeCuda:
    return FakeCuda(str(ROOT) + "/")


def test_the_mock_catches_what_a_gpu_refuses():
    """A control: each kind of mistake it is there to catch is reported, and correct code is not."""
    with fake() as f:
        d = torch.ones(4, 3, device="cuda")
        assert d.device.type == "cuda" and d.is_cuda and not torch.ones(2).is_cuda
        ok = torch.eye(3, device=d.device) - d[:, :, None] * d[:, None, :]
        ok = ok + torch.tensor(2.0)  # a CPU scalar is allowed
        rows = torch.tensor([0, 2]).to(d.device)
        _ = d[rows], d[torch.tensor([1])], d.cpu().numpy(), d.cpu()[torch.tensor([0])]
        torch.rand(3, generator=torch.Generator()).to(d.device)
        assert f.problems == []
        _ = torch.eye(3) - d[:, :, None] * d[:, None, :]
        _ = torch.zeros(4)[rows]
        _ = d.numpy()
        torch.rand(3, generator=torch.Generator(), device="cuda")
    kinds = [p.splitlines()[0] for p in f.problems]
    assert len(kinds) == 4, f.problems
    assert "mixes devices" in kinds[0] and "cuda index into a cpu tensor" in kinds[1]
    assert "numpy() of a cuda tensor" in kinds[2] and "CPU generator" in kinds[3]
    assert "tests/nerf/test_cuda_paths.py" in f.problems[0]  # names the line


def test_the_mock_lists_what_would_wait_for_the_gpu():
    """A control for ``syncs``: reading a CUDA tensor on the host and data-sized ops are listed, with their line;
    the same on CPU tensors, and ops of a known output size, are not."""
    with fake() as f:
        d = torch.arange(6.0, device="cuda")
        c = torch.arange(6.0)
        _ = c.item() if c.numel() == 1 else c.tolist(), c[c > 2], torch.nonzero(c), c.to("cpu")
        _ = d * 2, d[torch.tensor([0, 3]).cuda()], torch.where(d > 2, d, 0.0), d.repeat_interleave(2), d.to("cuda")
        assert f.syncs == []
        _ = d.sum().item(), d.tolist(), bool(d.any()), d.cpu(), d.to("cpu"), float(d[0])
        _ = torch.nonzero(d), d[d > 2], torch.unique(d), d.repeat_interleave(torch.ones(6, dtype=torch.long).cuda())
        d[d > 4] = 0.0
    ops = [s.split(" at ")[0] for s in f.syncs]
    assert ops == ["item", "tolist", "__bool__", "cpu", "to", "__float__", "nonzero", "__getitem__", "unique",
                   "repeat_interleave", "__setitem__"], f.syncs
    assert all(s.split(" at ")[1].startswith("tests/nerf/test_cuda_paths.py:") for s in f.syncs)


def test_a_training_step_waits_for_the_gpu_only_to_compact_its_rays_and_read_its_losses(small_dataset):
    """On a GPU every wait for the device stalls the queue of kernels, so a step has only the two that it needs:
    sample_rays keeping the rays that cross occupied space (once per rendered batch; the lips stage renders two),
    and the one copy of the step's losses to the host. Grid updates, loss masks, grouping rays by frame and
    placing the lips patch wait for nothing."""
    frames = load_identity(str(small_dataset), IDENTITY, 64)
    cfg = with_steps(preset("debug"), 4, 2, 2)
    cfg = replace(cfg, model=replace(cfg.model, grid=replace(cfg.model.grid, update_every=2, cells_per_update=1000)))
    per_step = []
    with fake() as f:
        trainer = Trainer(cfg, frames, device="cuda", lpips=lpips_module())
        while True:
            f.syncs.clear()
            if (r := trainer.step()) is None:
                break
            per_step.append((r.stage, sorted(s.split(":")[0] for s in f.syncs)))
    assert f.problems == [], "\n".join(f.problems)
    assert [stage for stage, _ in per_step] == ["head"] * 4 + ["lips"] * 2 + ["torso"] * 2
    for stage, syncs in per_step:
        renders = 2 if stage == "lips" else 1
        assert syncs == ["nonzero at nerf/rendering.py"] * renders + ["tolist at nerf/trainer.py"], (stage, syncs)


@pytest.mark.parametrize("backbone", ["grid", "frequency"])
def test_training_evaluation_and_rendering_keep_to_one_device(small_dataset, tmp_path, backbone):
    frames = load_identity(str(small_dataset), IDENTITY, 64)
    cfg = preset("debug")
    m = cfg.model
    m = replace(m, pose_refine=True, losses=replace(m.losses, latent_smooth=0.1, pose_smooth=0.1, grid_tv=0.01),
                head=replace(m.head, audio_gate=0.05, backbone=backbone, mlp_hidden=32, mlp_layers=2),  # small MLP:
                grid=replace(m.grid, cells_per_update=1000))  # the device paths are the same, the CPU time a sixth
    cfg = replace(cfg, model=m, trainer=replace(cfg.trainer, error_map=8, error_fraction=0.25))
    lpips = lpips_module()
    with fake() as f:
        trainer = Trainer(cfg, frames, device="cuda", lpips=lpips)
        assert next(trainer.model.parameters()).device.type == "cuda"
        while (r := trainer.step()) is not None:
            if r.global_step == 3:
                trainer.save_checkpoint(tmp_path / "mid.pt")
        held_out = int(frames.val_ids[0])
        trainer.render_frame(held_out)
        trainer.render_frame(1, novel=True, audio_from=2)
        trainer.render_frame(held_out, head_only=True)
        evaluate(trainer, frames=frames.val_ids[:1], lpips=lpips, align_poses=True)
        trainer.save_checkpoint(tmp_path / "end.pt")
        resumed = Trainer(cfg, frames, device="cuda", lpips=lpips)
        resumed.load_checkpoint(tmp_path / "mid.pt")
        for _ in range(3):
            resumed.step()
        avatar = Avatar.from_checkpoint(tmp_path / "end.pt", "cuda")
        out = list(avatar.render(frames.audio[:2], size=48))
        out += list(avatar.render(frames.audio[:1], poses=frames.poses[:1], eye=frames.eye[:1]))
    assert f.problems == [], "\n".join(f.problems)
    assert len(out) == 3 and out[0].shape == (48, 48, 3) and out[0].dtype == np.uint8


def test_the_train_evaluate_and_render_jobs_keep_to_one_device(small_dataset, tmp_path):
    """``parley train`` / ``evaluate`` / ``render`` with ``--device cuda``: the jobs around the trainer (logging,
    LMD landmarks and the side-by-side video of evaluation, audio features and the mp4 of rendering)."""
    from jobs.render import render_audio
    from jobs.train import TrainJob, evaluate_checkpoint, train_identity
    from tests.conftest import SHARED

    with fake() as f:
        res = train_identity(TrainJob(dataset=str(small_dataset), identity=IDENTITY, output=tmp_path / "run",
                                      preset="debug", device="cuda"))
        evaluate_checkpoint(res["checkpoint"], str(small_dataset), tmp_path / "eval", device="cuda")
        video = render_audio(res["checkpoint"], SHARED / "data" / "audio" / "RD_Radio31_000.wav",
                             tmp_path / "out.mp4", size=32, device="cuda")
    assert f.problems == [], "\n".join(f.problems)
    assert np.isfinite(res["metrics"]["psnr"]) and video["frames"] == 200


def test_rendering_takes_the_device_s_rays_per_chunk(small_dataset, tmp_path, monkeypatch):
    """A frame is rendered in chunks of 32768 rays on the CPU and, by default, in one forward pass of up to 2^18
    rays on a GPU (the mock device here); an explicit chunk wins, and a chunk under one ray is an error."""
    frames = load_identity(str(small_dataset), IDENTITY, 64)
    Trainer(with_steps(preset("debug"), 1, 0, 1), frames).save_checkpoint(tmp_path / "ckpt.pt")
    rays: list[int] = []
    get_outputs = RadNerf.get_outputs

    def spy(self, origins, *args, **kwargs):
        rays.append(int(origins.shape[0]))
        return get_outputs(self, origins, *args, **kwargs)

    monkeypatch.setattr(RadNerf, "get_outputs", spy)
    avatar = Avatar.from_checkpoint(tmp_path / "ckpt.pt")
    next(avatar.render(frames.audio[:1], size=200))
    assert rays == [32768, 200 * 200 - 32768]
    rays.clear()
    next(avatar.render(frames.audio[:1], size=200, chunk=15000))
    assert rays == [15000, 15000, 10000]
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        next(avatar.render(frames.audio[:1], size=32, chunk=0))
    rays.clear()
    with fake() as f:
        next(Avatar.from_checkpoint(tmp_path / "ckpt.pt", "cuda").render(frames.audio[:1], size=200))
    assert f.problems == [], "\n".join(f.problems)
    assert rays == [200 * 200]
    assert default_chunk("cuda") == 1 << 18 and default_chunk(torch.device("cpu")) == 1 << 15
