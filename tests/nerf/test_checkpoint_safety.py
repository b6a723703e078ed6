"""Checkpoints survive damage and refuse to resume on a rebuilt dataset (issue 34, item 12)."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.train import load_identity
from nerf.checkpoint import CheckpointError, previous_path
from nerf.methods import preset
from nerf.trainer import Trainer
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.nerf.helpers import with_steps


@pytest.fixture(scope="module")
def frames(small_dataset):
    return load_identity(str(small_dataset), IDENTITY, 64)


def test_identity_frames_know_their_dataset_build(frames, small_dataset):
    """The reader stamps the frames with a fingerprint of the identity's committed clips; same build, same one."""
    assert len(frames.version) == 12
    assert load_identity(str(small_dataset), IDENTITY, 64).version == frames.version


def test_resuming_on_frames_of_another_build_is_refused(frames, tmp_path):
    """A checkpoint of one build of the frames does not resume on another (the dataset was rebuilt)."""
    cfg = with_steps(preset("debug"), head=4)
    a = Trainer(cfg, frames)
    a.step()
    path = a.save_checkpoint(tmp_path / "checkpoint.pt")
    b = Trainer(cfg, dataclasses.replace(frames, version="0123456789ab"))
    with pytest.raises(CheckpointError, match="another build of .* frames"):
        b.load_checkpoint(path)
    Trainer(cfg, frames).load_checkpoint(path)  # the same build resumes


def test_a_damaged_checkpoint_resumes_from_the_previous_one(frames, tmp_path):
    """Each save keeps the one it replaces; a truncated checkpoint resumes from it with a warning, not from zero."""
    cfg = with_steps(preset("debug"), head=6)
    a = Trainer(cfg, frames)
    path = tmp_path / "checkpoint.pt"
    a.step()
    a.save_checkpoint(path)
    assert not previous_path(path).exists()
    a.step()
    a.step()
    a.save_checkpoint(path)
    assert previous_path(path).exists()
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    b = Trainer(cfg, frames)
    with pytest.warns(UserWarning, match="previous checkpoint"):
        b.load_checkpoint(path)
    assert b.global_step == 1
