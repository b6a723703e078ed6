"""The asset registry: env var directory, user cache, checksum checks, clear errors."""

from __future__ import annotations

import shutil
import sys

import pytest

from workers import assets
from workers.errors import AssetError


@pytest.fixture(autouse=True)
def no_venv_record(tmp_path, monkeypatch):
    """Hide the asset directory ``make env`` records in .venv (tests/workers/test_assets_venv.py covers it)."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-venv"))


def test_resolves_from_the_env_var_directory():
    """Shared assets resolve from $PARLEY_ASSETS and pass their checksums."""
    for name in ("face_landmarker", "selfie_segmentation", "ict_face_model", "blazeface", "blazeface_anchors"):
        path = assets.resolve(name, download=False)
        assert path.is_file() and path.name == assets.ASSETS[name].filename


def test_falls_back_to_the_user_cache(tmp_path, monkeypatch, shared):
    """With the env var directory lacking the file, the user cache is used."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(shared / "assets" / "anchors.npy", cache / "anchors.npy")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path / "empty"))
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(cache))
    assert assets.resolve("blazeface_anchors", download=False) == cache / "anchors.npy"


def test_corrupt_file_is_rejected(tmp_path, monkeypatch, shared):
    """A file with the right name but wrong bytes fails its checksum, naming the file."""
    bad = tmp_path / "anchors.npy"
    bad.write_bytes((shared / "assets" / "anchors.npy").read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    with pytest.raises(AssetError, match="checksum mismatch") as err:
        assets.resolve("blazeface_anchors", download=False)
    assert str(bad) in str(err.value)


def test_missing_asset_names_file_env_var_and_url(tmp_path, monkeypatch):
    """Offline and missing: the error names the file, the env var and the public URL."""
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path / "a"))
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path / "b"))
    with pytest.raises(AssetError) as err:
        assets.resolve("face_landmarker", download=False)
    msg = str(err.value)
    assert "face_landmarker.task" in msg and "PARLEY_ASSETS" in msg and "storage.googleapis.com" in msg


def test_unknown_asset_lists_the_registry():
    """An unknown name is a KeyError listing what exists."""
    with pytest.raises(KeyError, match="face_landmarker"):
        assets.resolve("no_such_model")
