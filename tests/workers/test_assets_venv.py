"""The asset directory recorded in the virtual environment (``<sys.prefix>/parley-assets``, written by make env)."""

from __future__ import annotations

import shutil
import sys

import pytest

from workers import assets
from workers.errors import AssetError


@pytest.fixture
def venv(tmp_path, monkeypatch):
    """An empty virtual environment root as ``sys.prefix``, no $PARLEY_ASSETS, an empty user cache."""
    root = tmp_path / "venv"
    root.mkdir()
    monkeypatch.setattr(sys, "prefix", str(root))
    monkeypatch.delenv(assets.ENV_VAR, raising=False)
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return root


def test_recorded_directory_is_found_without_the_env_var(venv, shared):
    """With PARLEY_ASSETS unset, a file in the recorded directory is found."""
    (venv / assets.VENV_RECORD).write_text(f"{shared / 'assets'}\n")
    assert assets.venv_dir() == shared / "assets"
    assert assets.resolve("blazeface_anchors", download=False) == shared / "assets" / "anchors.npy"


def test_relative_record_is_relative_to_the_venv(venv, shared):
    """A relative record is resolved against the venv root."""
    (venv / "models").mkdir()
    shutil.copy(shared / "assets" / "anchors.npy", venv / "models" / "anchors.npy")
    (venv / assets.VENV_RECORD).write_text("models")
    assert assets.resolve("blazeface_anchors", download=False) == venv / "models" / "anchors.npy"


def test_explicit_env_var_wins(venv, shared, tmp_path, monkeypatch):
    """An explicit PARLEY_ASSETS is looked in before the record."""
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(shared / "assets" / "anchors.npy", mine / "anchors.npy")
    (venv / assets.VENV_RECORD).write_text(str(shared / "assets"))
    monkeypatch.setenv(assets.ENV_VAR, str(mine))
    assert assets.resolve("blazeface_anchors", download=False) == mine / "anchors.npy"


def test_env_var_directory_lacking_the_file_falls_back_to_the_record(venv, shared, tmp_path, monkeypatch):
    """A PARLEY_ASSETS directory without the file falls through to the record."""
    (venv / assets.VENV_RECORD).write_text(str(shared / "assets"))
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path / "empty"))
    assert assets.resolve("blazeface_anchors", download=False) == shared / "assets" / "anchors.npy"


def test_record_comes_before_the_user_cache(venv, shared, tmp_path):
    """The record is looked in before the user cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(shared / "assets" / "anchors.npy", cache / "anchors.npy")
    (venv / assets.VENV_RECORD).write_text(str(shared / "assets"))
    assert assets.resolve("blazeface_anchors", download=False) == shared / "assets" / "anchors.npy"


def test_no_record_and_missing_file_names_where_it_looked(venv, tmp_path):
    """No record reads as None; a record without the file is named in the error."""
    assert assets.venv_dir() is None
    (venv / assets.VENV_RECORD).write_text(str(tmp_path / "gone"))
    with pytest.raises(AssetError) as err:
        assets.resolve("face_landmarker", download=False)
    msg = str(err.value)
    assert assets.VENV_RECORD in msg and str(tmp_path / "gone") in msg and "PARLEY_ASSETS" in msg

