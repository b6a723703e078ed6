"""``benchmarks/gpu.py``, the device check prepared for a session that is lent a GPU, run here on the CPU with tiny
settings, so that the one call such a session makes does not fail on a bug that a CPU could have shown.

What only a GPU exercises stays unexercised here (and is skipped, not faked): the kernels part's pytest of the
Triton kernels and the comparison of a GPU frame with the CPU's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.gpu import FEATURES, write_bundle
from jobs.train import load_identity
from nerf.avatar import Avatar
from nerf.methods import preset
from nerf.trainer import Trainer
from tests.conftest import ROOT
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.helpers import with_steps


def gpu_py(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "benchmarks/gpu.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(small_dataset, tmp_path_factory):
    """A bundle as ``gpu.py pack`` writes it, of a debug-preset checkpoint and random audio features."""
    tmp = tmp_path_factory.mktemp("gpu_bundle")
    cfg = with_steps(preset("debug"), head=6, lips=0, torso=4)
    trainer = Trainer(cfg, load_identity(str(small_dataset), IDENTITY, 64))
    trainer.train()
    ckpt = trainer.save_checkpoint(tmp / "ckpt.pt")
    a = cfg.model.head.audio
    feats = np.random.default_rng(0).standard_normal((4, a.window, a.n_mels)).astype(np.float32)
    return write_bundle(tmp / "bundle", ckpt, feats, small_dataset, IDENTITY, {"clip": "test"})


def test_every_part_runs_and_reports(bundle, tmp_path):
    out = tmp_path / "out"
    p = gpu_py("run", "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--sizes", "32,48",
               "--frames", "3", "--runs", "1", "--groups", "1,2,4", "--pace-steps", "7", "--presets", "debug",
               "--preset", "debug", "--train-budget", "2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "gpu.json").read_text())
    assert res["errors"] == {} and res["bundle"]["identity"] == IDENTITY
    assert set(res["seconds"]) == {"kernels", "render", "train", "quality"}
    # the sweep: each march group with early termination and the full pass, at each chunk size
    rows = res["render"]["sweep"]
    assert {(r["size"], r["march_group"], r["stop_transmittance"], r["chunk"]) for r in rows} == {
        (s, g, stop, c) for s in (32, 48) for g, stop in ((1, 1e-4), (2, 1e-4), (4, 1e-4), (1, 0.0))
        for c in (s * s, 1 << 15)}
    assert all(r["fps"] > 0 for r in rows) and res["render"]["default"]["48"] > 0
    # the checkpoint's own setting (group 2; both chunks hold these whole frames) is not measured twice
    same = [r for r in rows if r.get("default")]
    assert {(r["size"], r["march_group"]) for r in same} == {(32, 2), (48, 2)} and len(same) == 4
    assert all(r["fps"] == res["render"]["default"][str(r["size"])] for r in same)
    assert res["render"]["default_chunk"] == 1 << 15
    assert res["render"]["best_48"]["fps"] == max(r["fps"] for r in rows if r["size"] == 48)
    assert res["render"]["sampler"]["march_group"] == 2  # the checkpoint's own settings, restored after the sweep
    assert (out / "render_profile.txt").read_text().startswith("cpu, 48 px")
    pace = res["train"]["debug"]
    assert pace["head_samples_per_s"] > 0 and pace["head_s_per_step"] > 0 and pace["torso_s_per_step"] > 0
    q = res["quality"]
    assert q["preset"] == "debug" and q["head_steps"] >= 10 and 3 < q["psnr"] < 60 and q["n_frames"] >= 1
    assert Avatar.from_checkpoint(out / "checkpoint_gpu.pt").identity == IDENTITY
    figures = dict(kv.split("=") for kv in p.stdout.strip().splitlines()[-1].split())
    assert set(figures) == {"cpu_fps_32", "cpu_fps_48", "cpu_best_fps_48", "cpu_head_samples_per_s", "cpu_psnr",
                            "cpu_train_s"}
    assert float(figures["cpu_psnr"]) == pytest.approx(q["psnr"], rel=1e-3)


def test_a_failing_part_is_recorded_and_the_others_still_run(bundle, tmp_path):
    broken = tmp_path / "bundle"
    write_bundle(broken, bundle / "checkpoint.pt", np.zeros((3, 2, 2), np.float32), bundle / "dataset", IDENTITY, {})
    out = tmp_path / "out"
    p = gpu_py("run", "--bundle", str(broken), "--out", str(out), "--device", "cpu", "--parts", "render,train",
               "--sizes", "32", "--frames", "2", "--runs", "1", "--groups", "2", "--pace-steps", "6",
               "--presets", "debug")
    assert p.returncode == 1
    res = json.loads((out / "gpu.json").read_text())
    assert "AudioError" in res["errors"]["render"] and "[2, 2]" in res["errors"]["render"]
    assert res["train"]["debug"]["head_samples_per_s"] > 0  # ran after the render part failed
    assert "failed parts: render" in p.stdout


def test_bad_invocations_are_one_line_errors(bundle, tmp_path):
    p = gpu_py("run", "--bundle", str(tmp_path / "nope"), "--device", "cpu")
    assert p.returncode == 2 and "is not a bundle" in p.stderr and "checkpoint.pt" in p.stderr
    p = gpu_py("run", "--bundle", str(bundle), "--parts", "render,fly")
    assert p.returncode == 2 and "unknown fly" in p.stderr
    p = gpu_py("run", "--bundle", str(bundle), "--presets", "cpu,huge")
    assert p.returncode == 2 and "unknown huge" in p.stderr
    if not torch.cuda.is_available():
        p = gpu_py("run", "--bundle", str(bundle), "--out", str(tmp_path / "o"))
        assert p.returncode == 2 and "no CUDA device" in p.stderr
    p = gpu_py("pack", "--checkpoint", str(bundle / "checkpoint.pt"), "--clip", "/tmp/other_clip.mp4",
               "--out", str(tmp_path / "b"))
    assert p.returncode == 1 and f"trained on '{IDENTITY}'" in p.stderr and not (tmp_path / "b").exists()
    assert (bundle / FEATURES).is_file()
