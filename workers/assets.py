"""One registry of the model files parley uses, and how they are found.

Resolution order for an asset named ``NAME`` with file name ``FILE``:

1. ``$PARLEY_ASSETS/FILE`` (CI and tests point ``PARLEY_ASSETS`` at ``../shared/assets``);
2. the directory recorded in the running virtual environment, ``<sys.prefix>/parley-assets`` (one line, a
   path; ``make env`` writes it, so ``parley`` typed in a shell finds the files ``make`` uses);
3. the user cache, ``$PARLEY_CACHE`` or ``~/.cache/parley/assets/FILE``;
4. a download from the asset's public URL into the user cache, checked against its sha256.

A directory that lacks the file is passed over for the next one.

A file that is found but has the wrong checksum is an error, never silently used. A missing
asset on a machine that cannot download raises :class:`AssetError` naming the file, the
environment variable and the URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from workers.errors import AssetError

ENV_VAR = "PARLEY_ASSETS"
CACHE_ENV_VAR = "PARLEY_CACHE"
VENV_RECORD = "parley-assets"
"""File in the virtual environment's root (``sys.prefix``) naming an asset directory (written by ``make env``)."""


@dataclass(frozen=True)
class Asset:
    """A model file parley needs."""

    name: str
    """Registry key."""
    filename: str
    """File name inside an asset directory."""
    url: str | None
    """Public download URL, or None when the file cannot be downloaded from anywhere public."""
    sha256: str | None
    """Full sha256 of the file (hex), when known."""
    licence: str
    """Licence of the file."""
    sha256_prefix: str | None = None
    """When only a prefix is published (torch.hub convention, in the file name), that prefix."""
    description: str = ""


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "face_landmarker",
            "face_landmarker.task",
            "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
            "face_landmarker.task",
            "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            "Apache-2.0",
            description="MediaPipe FaceLandmarker: 478 landmarks, 52 blendshapes, head transform",
        ),
        Asset(
            "selfie_segmentation",
            "selfie_segmentation.tflite",
            "https://github.com/google-ai-edge/mediapipe/raw/v0.10.21/mediapipe/modules/"
            "selfie_segmentation/selfie_segmentation.tflite",
            "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
            "Apache-2.0",
            description="MediaPipe legacy selfie segmentation (person vs background)",
        ),
        Asset(
            "face_detector_full_range",
            "face_detection_full_range_sparse.tflite",
            "https://storage.googleapis.com/mediapipe-assets/face_detection_full_range_sparse.tflite"
            "?generation=1674261618323821",
            "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
            "Apache-2.0",
            description="MediaPipe full-range (sparse) face detector, faces up to ~5 m, for small faces in wide "
            "shots; the file of the mediapipe 0.10.18 wheel (mediapipe/modules/face_detection/); URL and sha256 "
            "as listed in MediaPipe's third_party/external_files.bzl",
        ),
        Asset(
            "ict_face_model",
            "ict_face_model_light.npz",
            None,
            "f1c171f3d3b0b3c57c15d84fb9e776b25f4ff946df5b6c89d8628a34e3bac1e4",
            "MIT",
            description="ICT-FaceKit light linear face model, converted to npz (see ../shared/README.md)",
        ),
        Asset(
            "alexnet_features",
            "alexnet_features_imagenet.pth",
            None,
            "780c3f7cc3e90bb0f20d0006e83eb9c7b612f30288b3df12385607e40b46bdee",
            "BSD",
            description="ImageNet AlexNet `features` weights: the LPIPS backbone",
        ),
        Asset(
            "blazeface",
            "blazeface.pth",
            "https://github.com/hollance/BlazeFace-PyTorch/raw/master/blazeface.pth",
            "54ecff653feaaaf1f7d44b6aff28fd2fc50e483a4e847563b6dd261369c43ba4",
            "Apache-2.0",
            description="BlazeFace front-camera face detector (face-alignment backend)",
        ),
        Asset(
            "blazeface_anchors",
            "anchors.npy",
            "https://github.com/hollance/BlazeFace-PyTorch/raw/master/anchors.npy",
            "a10bb2fb93ab54ca426d6c750bfc3aad685028a16dcf231357d03694f261fd95",
            "Apache-2.0",
            description="BlazeFace anchors",
        ),
        Asset(
            "fan_2d",
            "2DFAN4-11f355bf06.pth.tar",
            "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
            None,
            "BSD-3-Clause",
            sha256_prefix="11f355bf06",
            description="face-alignment 2D-FAN-4 landmark network (68 points)",
        ),
    ]
}

_VERIFIED: set[tuple[str, float, int]] = set()


def cache_dir() -> Path:
    """The user cache directory for assets (created on demand)."""
    base = os.environ.get(CACHE_ENV_VAR)
    return Path(base) if base else Path.home() / ".cache" / "parley" / "assets"


def venv_dir() -> Path | None:
    """The asset directory recorded in the running virtual environment (:data:`VENV_RECORD`), if any.

    A relative path is relative to the environment's root.
    """
    record = Path(sys.prefix) / VENV_RECORD
    try:
        text = record.read_text().strip()
    except OSError:
        return None
    return Path(sys.prefix) / Path(text).expanduser() if text else None


def sha256_of(path: Path) -> str:
    """The sha256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(asset: Asset, path: Path) -> None:
    """Check a file against the asset's checksum.

    Raises:
        AssetError: the checksum does not match.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key in _VERIFIED:
        return
    digest = sha256_of(path)
    if asset.sha256 and digest != asset.sha256:
        raise AssetError(
            f"{path}: checksum mismatch for asset '{asset.name}' (sha256 {digest}, expected "
            f"{asset.sha256}). Replace the file with the one from {asset.url or 'the project shared folder'}."
        )
    if asset.sha256_prefix and not digest.startswith(asset.sha256_prefix):
        raise AssetError(
            f"{path}: checksum mismatch for asset '{asset.name}' (sha256 {digest[:16]}..., expected a "
            f"digest starting {asset.sha256_prefix}). Replace the file with the one from {asset.url}."
        )
    _VERIFIED.add(key)


def _download(asset: Asset, dest: Path) -> None:
    if not asset.url:
        raise AssetError(f"asset '{asset.name}' has no public download URL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(asset.url, timeout=30) as resp:  # noqa: S310 (fixed URLs)
                shutil.copyfileobj(resp, tmp)
        except Exception:
            tmp_path.unlink(missing_ok=True)
            raise
    try:
        verify(asset, tmp_path)
    except AssetError:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(dest)


def resolve(name: str, *, download: bool = True) -> Path:
    """The local path of a registered asset, verified against its checksum.

    Args:
        name: a key of :data:`ASSETS`.
        download: try the public URL when the file is in none of the directories above.

    Returns:
        Path to the verified file.

    Raises:
        KeyError: ``name`` is not a registered asset.
        AssetError: the file is missing and cannot be downloaded, or its checksum is wrong.
    """
    if name not in ASSETS:
        raise KeyError(f"unknown asset '{name}'; registered assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    candidates: list[Path] = []
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        candidates.append(Path(env_dir) / asset.filename)
    recorded = venv_dir()
    if recorded is not None:
        candidates.append(recorded / asset.filename)
    candidates.append(cache_dir() / asset.filename)
    for path in candidates:
        if path.is_file():
            verify(asset, path)
            return path
    where = f"${ENV_VAR} ({env_dir})" if env_dir else f"${ENV_VAR} (not set)"
    if recorded is not None:
        where += f", the directory recorded in {Path(sys.prefix) / VENV_RECORD} ({recorded})"
    if download and asset.url:
        dest = cache_dir() / asset.filename
        try:
            _download(asset, dest)
            return dest
        except AssetError:
            raise
        except Exception as exc:  # network errors of every kind
            raise AssetError(
                f"asset '{asset.name}' ({asset.filename}) is not in {where} nor in {cache_dir()}, and "
                f"downloading it from {asset.url} failed ({type(exc).__name__}: {exc}). Put "
                f"{asset.filename} in the directory named by ${ENV_VAR}."
            ) from exc
    raise AssetError(
        f"asset '{asset.name}' ({asset.filename}) is not in {where} nor in {cache_dir()}"
        + (f"; it can be downloaded from {asset.url}" if asset.url else "; it has no public download URL")
        + f". Put {asset.filename} in the directory named by ${ENV_VAR}."
    )
