"""Shared fixtures: the ../shared folder (real clips and model files) and processed real clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
CLIPS = sorted((SHARED / "data" / "clips").glob("*.mp4"))
CONVERSATION = SHARED / "data" / "conversation" / "video_call_interview.mp4"

if not os.environ.get("PARLEY_ASSETS"):
    os.environ["PARLEY_ASSETS"] = str(SHARED / "assets")


def pytest_collection_modifyitems(config, items):
    """Every test needs the shared folder: fail loudly (not skip) when it is missing."""
    if not (SHARED / "assets").is_dir():
        raise pytest.UsageError(f"the shared folder is missing at {SHARED} (set PARLEY_SHARED)")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder with real clips and model files."""
    return SHARED


@pytest.fixture(scope="session")
def processor():
    """One default ClipProcessor for the session (models load once)."""
    from workers.clip import ClipProcessor

    p = ClipProcessor()
    yield p
    p.close()


@pytest.fixture(scope="session")
def processed(processor):
    """The three shared talking-head clips, each processed once: {stem: ClipResult}."""
    return {path.stem: processor(path) for path in CLIPS}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the test session (2 CPUs, no dashboard); builds run on it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def link_clip(src: Path, dst: Path) -> Path:
    """Copy (hard link when possible) a clip under a new name: a new source URI, hence a new clip."""
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)
    return dst


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A real one-identity dataset (``RD_Radio2_000``, first 30 frames of a shared clip) for the avatar tests."""
    from pipelines import dataset as D
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for

    root = tmp_path_factory.mktemp("small_dataset") / "ds"
    clip = next(c for c in CLIPS if c.stem == "RD_Radio2_000")
    p = ClipProcessor(ClipConfig(max_frames=30))
    try:
        res = p(str(clip), identity=clip.stem, clip_id=clip_id_for(str(clip)))
    finally:
        p.close()
    st = Storage(root)
    D.write_clip(st, res, identity=clip.stem)
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    return root
