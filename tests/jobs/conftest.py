"""Fixtures of the job tests that several modules share: a dataset of the three shared clips and the audio-lip
models trained on it by ``parley train-audio`` into a real ``mlflow server`` (once per session: the audio-lip tests
use them, and JEAN, which needs a registered encoder)."""

from __future__ import annotations

import pytest

from tests.conftest import build_small_dataset
from tests.services import mlflow_server

AUDIO_LIP_CLIPS = ["RD_Radio2_000", "WDA_BobMenendez_000", "WDA_AlexandriaOcasioCortez_000"]


@pytest.fixture(scope="session")
def audio_lip_server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-audio")) as s:
        yield s


@pytest.fixture(scope="session")
def audio_lip_dataset(tmp_path_factory):
    """The three shared clips, 60 frames each."""
    return build_small_dataset(tmp_path_factory.mktemp("audio_ds") / "ds", AUDIO_LIP_CLIPS, 60)


@pytest.fixture(scope="session")
def audio_lip_trained(audio_lip_dataset, audio_lip_server, ray_local, tmp_path_factory):
    """``parley train-audio --preset tiny`` on the dataset: (exit code, its arguments, its work folder); the
    ``audio-lip`` and ``lip-sync-scorer`` versions 1 are registered in the server, champions."""
    from jobs.cli import main

    work = tmp_path_factory.mktemp("train_audio")
    args = ["train-audio", "--dataset", str(audio_lip_dataset), "--tracking-uri", audio_lip_server.url,
            "--preset", "tiny", "--cpus-per-worker", "1", "--storage", str(work / "ray"), "--cache-dir",
            str(work / "cache"), "--val-fraction", "0.3"]
    rc = main(args)
    return rc, args, work
