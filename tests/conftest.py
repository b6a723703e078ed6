"""Shared fixtures: the ../shared folder (real clips and model files) and processed real clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
CLIPS = sorted((SHARED / "data" / "clips").glob("*.mp4"))
SMALL_IDENTITY = "RD_Radio2_000"
"""The identity of the ``small_dataset`` fixture."""
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


def build_small_dataset(root: Path, stems: list[str], max_frames: int = 30) -> Path:
    """A real dataset of the first ``max_frames`` frames of shared clips (identity = the clip's stem), built
    with :class:`workers.clip.ClipProcessor` (no Ray)."""
    from pipelines import dataset as D
    from pipelines.commit import write_clip
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for

    st = Storage(root)
    p = ClipProcessor(ClipConfig(max_frames=max_frames))
    try:
        for stem in stems:
            clip = next(c for c in CLIPS if c.stem == stem)
            res = p(str(clip), identity=clip.stem, clip_id=clip_id_for(str(clip)))
            write_clip(st, res, identity=clip.stem)
    finally:
        p.close()
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    return root


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A real one-identity dataset (``SMALL_IDENTITY``, first 30 frames of a shared clip) for the avatar tests."""
    return build_small_dataset(tmp_path_factory.mktemp("small_dataset") / "ds", [SMALL_IDENTITY])


@pytest.fixture(scope="session")
def two_identity_dataset(tmp_path_factory) -> Path:
    """A real two-identity dataset (first 30 frames of two shared clips) for the fan-out tests."""
    return build_small_dataset(tmp_path_factory.mktemp("two_identities") / "ds",
                               ["RD_Radio2_000", "WDA_BobMenendez_000"])
