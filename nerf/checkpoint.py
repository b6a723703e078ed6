"""Checkpoint files: atomic writes, the previous one kept beside, reads of tensors only.

A checkpoint is a plain dict of tensors, numbers and strings (``torch.load(weights_only=True)`` reads it): its
``format`` (``parley-<method>/<version>``), the model and EMA weights, the optimiser and scheduler state of the
current stage, the stage and step, the random generator's state, the JSON config, and the render kit
(background, the dataset's poses and eye openness, intrinsics) so that a checkpoint renders without the dataset.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from nerf import methods
from nerf.data import IdentityFrames


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a parley checkpoint this version reads."""


def render_kit(d: IdentityFrames) -> dict[str, Any]:
    """What rendering needs from the dataset: background, per-frame poses, intrinsics and eye openness (and the
    identity's 3DMM shape coefficients, to check an expression source against; for frames of several people, their
    names, each frame's person and each person's background)."""
    return {
        "size": d.size,
        "background": torch.from_numpy(d.background.copy()),
        "poses": torch.from_numpy(d.poses.copy()),
        "intrinsics": torch.from_numpy(d.intrinsics.copy()),
        "eye": torch.from_numpy(d.eye.copy()),
        "n_train": d.n_train,
        "frame_index": torch.from_numpy(d.frame_index.astype("int64")),
        "near": d.near,
        "far": d.far,
        **({} if d.person is None else {"people": list(d.people), "person": torch.from_numpy(d.person.copy()),
                                        "backgrounds": torch.from_numpy(d.all_backgrounds().copy())}),
        **({} if d.identity_coeffs is None else {"identity_coeffs": torch.from_numpy(d.identity_coeffs.copy())}),
    }


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint a new one replaced (``checkpoint.prev.pt``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically (temporary file, then rename); the one it replaces stays beside it as
    :func:`previous_path` (a damaged file then costs the steps since it, not the run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    if path.exists():  # a hard link, then a rename: `path` itself never goes missing in between
        keep = path.with_name(f".{path.name}.prev-{os.getpid()}")
        try:
            os.link(path, keep)
        except OSError:
            shutil.copy2(path, keep)
        os.replace(keep, previous_path(path))
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, fallback: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; its ``method`` key is set to the method its format names.

    Args:
        path: the checkpoint.
        fallback: when it does not read (cut short, damaged), read :func:`previous_path` instead, with a warning.

    Raises:
        CheckpointError: missing, unreadable, not a parley checkpoint, or of a method or version this parley lacks.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a corrupt file)
        prev = previous_path(p)
        if fallback and prev.is_file():
            warnings.warn(f"{p} does not read ({type(e).__name__}); resuming from the previous checkpoint {prev}",
                          stacklevel=2)
            return load_checkpoint(prev)
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a parley checkpoint (not a dict of tensors)")
    try:
        method, _ = methods.parse_format(ckpt.get("format"))
    except KeyError as e:
        raise CheckpointError(f"{p}: {e.args[0]}") from e
    ckpt["method"] = method.name
    return ckpt


def require_method(path: str | Path, found: str, wanted: str | None) -> None:
    """Raises :class:`CheckpointError` when ``wanted`` is given and the checkpoint at ``path`` is of another method."""
    if wanted is not None and found != wanted:
        raise CheckpointError(f"{path}: a {found} checkpoint, not {wanted} (drop --method, or give --method {found})")
