"""An identity's per-frame expression features for JEAN's expression transformer, read from a dataset.

JEAN feeds 2048-d emotion-recognition features (EMOCA), whose weights cannot be had here. The feature sets built
from what the dataset has (the choice is measured by ``benchmarks/expression.py``; docs/decisions.md, 'JEAN'):

* ``geometric``: MediaPipe's 52 blendshapes, the 57 ICT expression coefficients, eye openness and mouth opening;
* ``blendshapes``: the blendshapes alone;
* ``ict``: the 3DMM expression alone (the paper's ablation (d), which failed on 3DMM parameters);
* ``crop``: the frame's grey face crop aligned by the eyes and the mouth (:func:`align_face`, flattened, uint8
  values as float32); the model turns it into features with its own self-supervised encoder
  (:mod:`nerf.jean.face_crops`), trained on the identity's training frames.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.audio_lip_data import stack_column
from nerf.jean.face_crops import CROP
from pipelines.dataset import Dataset
from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW
from pipelines.storage import S3Options
from workers.landmarks import BLENDSHAPE_NAMES

COLUMNS = ["clip_id", "frame_index", "face_found", "blendshapes", "expression", "eye_ratio", "mouth_opening",
           "audio_features", "audio_valid"]
FEATURE_SETS = ("geometric", "blendshapes", "ict", "crop")
CROP_COLUMNS = ["image_jpeg", "landmarks_2d"]
TEMPLATE = np.asarray([[0.26, 0.34], [0.74, 0.34], [0.50, 0.76]], np.float32)
"""Where :func:`align_face` puts the two eye centres and the mouth's centre, in crop units: the crop spans the brows
to the chin, which is where expression shows."""


def blendshape_index(names: list[str]) -> list[int]:
    """Columns of the ``blendshapes`` array (``_neutral`` first, then MediaPipe's order) of the named shapes."""
    return [1 + BLENDSHAPE_NAMES.index(n) for n in names]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP) -> np.ndarray:
    """A grey ``size`` x ``size`` crop of ``image`` (BGR or grey) under the similarity transform that puts the 68
    landmarks' eye centres and mouth centre (pixels of ``image``) at :data:`TEMPLATE`: uint8 [size, size]."""
    import cv2

    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    src = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)])
    dst = TEMPLATE.astype(np.float64) * size
    # least squares for x' = a x - b y + tx, y' = b x + a y + ty
    rows = np.zeros((6, 4))
    rows[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(3), np.zeros(3)], 1)
    rows[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(3), np.ones(3)], 1)
    a, b, tx, ty = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)[0]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    m = np.asarray([[a, -b, tx], [b, a, ty]], np.float64)
    return cv2.warpAffine(grey, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def face_crops(jpegs: list[bytes], landmarks: np.ndarray) -> np.ndarray:
    """Aligned crops of encoded frames and their landmarks [N, 68, 2]: uint8 [N, CROP * CROP]."""
    import cv2

    out = np.zeros((len(jpegs), CROP * CROP), np.uint8)
    for k, (jpg, lm) in enumerate(zip(jpegs, landmarks, strict=True)):
        image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"frame {k}: its image does not decode")
        out[k] = align_face(image, lm).reshape(-1)
    return out


def read_expression_rows(dataset: str, identity: str, s3_endpoint: str | None = None,
                         crops: bool = False) -> dict[str, np.ndarray]:
    """The identity's frames with a face, in (clip, frame) order: ``blendshapes`` [N, 52], ``expression`` [N, 57],
    ``eye_ratio``, ``mouth_opening``, ``mel`` [N, 16, 80], ``audio_valid``, ``clip`` (int per clip, in the
    dataset's clip order), ``frame``; with ``crops``, ``crop`` [N, CROP * CROP] too (:func:`align_face`).

    Raises:
        KeyError: no such identity; ValueError: no frame with a face.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    clips = ds.identity_clips(identity)
    tables = [b for b in ds.iter_frames(identity, COLUMNS + (CROP_COLUMNS if crops else []), batch_rows=256)]
    t = pa.Table.from_batches(tables) if tables else None
    if t is None or t.num_rows == 0:
        raise ValueError(f"{identity}: no frames in {dataset}")
    found = np.asarray(t.column("face_found").fill_null(False).to_numpy(zero_copy_only=False), bool)
    found &= ~np.asarray(t.column("blendshapes").is_null().to_numpy(zero_copy_only=False), bool)
    t = t.filter(pa.array(found))
    if t.num_rows == 0:
        raise ValueError(f"{identity}: no frame of {dataset} shows a face")
    clip = np.asarray([clips.index(c) for c in t.column("clip_id").to_pylist()], np.int64)
    frame = t.column("frame_index").to_numpy().astype(np.int64)
    order = np.lexsort((frame, clip))
    out = {
        "blendshapes": stack_column(t.column("blendshapes"), (52,)),
        "expression": stack_column(t.column("expression"), (57,)),
        "eye_ratio": np.asarray(t.column("eye_ratio").fill_null(0.0).to_numpy(), np.float32),
        "mouth_opening": np.asarray(t.column("mouth_opening").fill_null(0.0).to_numpy(), np.float32),
        "mel": stack_column(t.column("audio_features"), (AUDIO_WINDOW, AUDIO_MELS)),
        "audio_valid": np.asarray(t.column("audio_valid").fill_null(False).to_numpy(zero_copy_only=False), bool),
        "clip": clip, "frame": frame,
    }
    if crops:
        out["crop"] = face_crops(t.column("image_jpeg").to_pylist(), stack_column(t.column("landmarks_2d"), (68, 2)))
    return {k: v[order] for k, v in out.items()}


def expression_features(rows: dict[str, np.ndarray], name: str = "geometric") -> np.ndarray:
    """One feature set (:data:`FEATURE_SETS`) of :func:`read_expression_rows`' rows: float32 [N, F]."""
    if name == "geometric":
        parts = [rows["blendshapes"], rows["expression"], rows["eye_ratio"][:, None], rows["mouth_opening"][:, None]]
    elif name == "blendshapes":
        parts = [rows["blendshapes"]]
    elif name == "ict":
        parts = [rows["expression"]]
    elif name == "crop":
        if "crop" not in rows:
            raise ValueError("crop features: the rows hold no face crops (read them with crops=True)")
        parts = [rows["crop"]]
    else:
        raise ValueError(f"unknown expression features {name!r} (known: {', '.join(FEATURE_SETS)})")
    return np.concatenate(parts, 1).astype(np.float32)


def frame_features(dataset: str, identity: str, clip_ids: list[str], frame_index: np.ndarray, feature_set: str,
                   s3_endpoint: str | None = None) -> np.ndarray:
    """One feature set of the identity's frames named by (clip, frame) pairs (e.g. a training set's frames, in its
    order): float32 [N, F]. A frame without features (a face found but no blendshapes) takes the nearest earlier
    one's of its clip, else the next one's.

    Raises:
        KeyError: no such identity; ValueError: a clip of ``clip_ids`` has no frame with features.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    clips = ds.identity_clips(identity)
    rows = read_expression_rows(dataset, identity, s3_endpoint, crops=feature_set == "crop")
    feats = expression_features(rows, feature_set)
    out = np.zeros((len(clip_ids), feats.shape[1]), np.float32)
    for name in dict.fromkeys(clip_ids):
        mine = np.nonzero(np.asarray(clip_ids) == name)[0]
        have = np.nonzero(rows["clip"] == clips.index(name))[0] if name in clips else np.zeros(0, np.int64)
        if have.size == 0:
            raise ValueError(f"{identity}: clip {name} has no frame with expression features in {dataset}")
        out[mine] = feats[have[nearest_earlier(rows["frame"][have], np.asarray(frame_index)[mine])]]
    return out


def nearest_earlier(known: np.ndarray, want: np.ndarray) -> np.ndarray:
    """For each of ``want``'s frame numbers, the position in ``known`` (sorted frame numbers that have features) of
    the nearest one at or before it, else the first one after it: int64 [len(want)]."""
    pos = np.searchsorted(np.asarray(known), np.asarray(want, np.int64), side="right") - 1
    return np.clip(pos, 0, len(known) - 1).astype(np.int64)
