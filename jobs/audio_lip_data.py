"""A dataset's frames as the audio-lip models' arrays: pixel landmarks, audio windows, mouth crops.

Every committed clip of every identity is read (a two-person clip gives each person's rows as its own "clip"),
and each frame's mouth is cut from its person crop by :func:`workers.mouth.mouth_crop`. Reading and decoding is
the slow part (~5 ms a frame), so the arrays can be cached by the dataset's version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from nerf.audio_lip.data import AudioLipData
from pipelines.dataset import Dataset
from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW
from pipelines.storage import S3Options
from workers.mouth import MOUTH_DROP, MOUTH_SIZE, MOUTH_SPAN, mouth_crop

log = logging.getLogger(__name__)
COLUMNS = ["landmarks_2d", "audio_features", "image_jpeg", "face_found", "audio_valid", "clip_id", "frame_index"]
CROP_RULE = f"mouth/{MOUTH_SIZE[0]}x{MOUTH_SIZE[1]}/{MOUTH_SPAN}/{MOUTH_DROP}"
"""Changes when the mouth crop changes, so cached arrays are rebuilt."""


def stack_column(col: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """A list column (null where there was no face) -> float32 [N, *shape], zeros for nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    present = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    out = np.zeros((len(arr), *shape), np.float32)
    if present.any():
        out[present] = arr.drop_null().flatten().to_numpy().astype(np.float32).reshape(-1, *shape)
    return out


def _read_identity(ds: Dataset, identity: str) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("landmarks", "mel", "crops", "clip", "frame", "valid")}
    for batch in ds.iter_frames(identity, COLUMNS, batch_rows=256):
        lms = stack_column(batch.column("landmarks_2d"), (68, 2))
        mel = stack_column(batch.column("audio_features"), (AUDIO_WINDOW, AUDIO_MELS))
        found = np.asarray(batch.column("face_found").fill_null(False).to_numpy(zero_copy_only=False), bool)
        audio = np.asarray(batch.column("audio_valid").fill_null(False).to_numpy(zero_copy_only=False), bool)
        crops = np.zeros((len(lms), MOUTH_SIZE[1], MOUTH_SIZE[0]), np.uint8)
        for i, jpeg in enumerate(batch.column("image_jpeg").to_pylist()):
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE) if jpeg and found[i] else None
            if img is None:
                found[i] = False
                continue
            crops[i] = mouth_crop(img, lms[i])
        parts["landmarks"].append(lms)
        parts["mel"].append(mel)
        parts["crops"].append(crops)
        parts["clip"].append(np.asarray(batch.column("clip_id").to_pylist(), object))
        parts["frame"].append(batch.column("frame_index").to_numpy().astype(np.int64))
        parts["valid"].append(found & audio)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def load_audio_lip_data(dataset: str, s3_endpoint: str | None = None, exclude: tuple[str, ...] = (),
                        cache_dir: str | Path | None = None) -> AudioLipData:
    """Every committed frame of a dataset's identities (but ``exclude``) as :class:`AudioLipData`.

    Args:
        dataset: dataset root.
        s3_endpoint: S3 endpoint of an ``s3://`` root.
        exclude: identities left out (e.g. the avatars a model will be evaluated on).
        cache_dir: keep the arrays here as ``<key>.npz``, keyed by the identities' versions and the crop rule.

    Raises:
        FileNotFoundError: no dataset at ``dataset``.
        ValueError: no frames left (every identity excluded, or an empty dataset).
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    names = [n for n in ds.identity_names() if n not in set(exclude)]
    if not names:
        raise ValueError(f"{dataset}: no identities to train on (found {ds.identity_names()}, excluded {exclude})")
    key = hashlib.sha256(json.dumps([CROP_RULE, ds.storage.uri, [(n, ds.identity_version(n)) for n in names]])
                         .encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return AudioLipData(**{k: z[k] for k in ("landmarks", "mel", "crops", "clip", "frame", "valid")},
                                clip_ids=[str(x) for x in z["clip_ids"]],
                                clip_identity=[str(x) for x in z["clip_identity"]])
    chunks: list[dict[str, np.ndarray]] = []
    clip_ids: list[str] = []
    clip_identity: list[str] = []
    for name in names:
        part = _read_identity(ds, name)
        keys = [f"{name}/{c}" for c in part["clip"]]
        uniq = list(dict.fromkeys(keys))
        index = {k: len(clip_ids) + i for i, k in enumerate(uniq)}
        part["clip"] = np.asarray([index[k] for k in keys], np.int64)
        clip_ids += uniq
        clip_identity += [name] * len(uniq)
        chunks.append(part)
        log.info("audio-lip data: %s, %d frames of %d clips", name, len(keys), len(uniq))
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((arrays["frame"], arrays["clip"]))
    arrays = {k: v[order] for k, v in arrays.items()}
    data = AudioLipData(**arrays, clip_ids=clip_ids, clip_identity=clip_identity)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.stem}.tmp.npz")
        np.savez(tmp, **arrays, clip_ids=np.asarray(clip_ids),  # type: ignore[arg-type]
                 clip_identity=np.asarray(clip_identity))
        tmp.replace(cached)
    return data
