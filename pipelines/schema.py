"""Parquet schemas of the dataset tables (``clips/``, ``frames/``, ``identities/``). Column names are a contract.

Arrays are stored flattened in lists; their shapes are in :data:`FRAME_SHAPES`. Pixel
coordinates are in the person crop (``image_size`` x ``image_size``) unless a column says otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

# The ``parsing_png`` label values, defined in the lowest layer (workers writes them); re-exported here for
# readers of the schema (nerf reads ``pipelines.schema``, never ``workers``).
from workers.labels import BACKGROUND as BACKGROUND
from workers.labels import HEAD as HEAD
from workers.labels import NECK as NECK
from workers.labels import TORSO as TORSO
from workers.pose import pose_from_6d as pose_from_6d
from workers.pose import pose_to_6d as pose_to_6d

N_MESH = 478
N_BLENDSHAPES = 52
N_EXPRESSION = 57
AUDIO_WINDOW = 16
AUDIO_MELS = 80

FRAME_SHAPES: dict[str, tuple[int, ...]] = {
    "bbox": (4,),
    "crop_box": (4,),
    "landmarks_2d": (68, 2),
    "landmarks_mesh": (N_MESH, 3),
    "pose_c2w": (4, 4),
    "expression": (N_EXPRESSION,),
    "blendshapes": (N_BLENDSHAPES,),
    "lips_rect": (4,),
    "face_rect": (4,),
    "audio_features": (AUDIO_WINDOW, AUDIO_MELS),
}


HOLDOUT_FRACTION = 1 / 11
"""Fraction of an identity's frames (the last ones) held out from training: RAD-NeRF's split."""


def train_count(n: int, val_fraction: float = HOLDOUT_FRACTION) -> int:
    """How many of ``n`` frames train; the rest (the last ones) are held out for validation.

    ``n - ceil(n * val_fraction)``, which for 1/11 is RAD-NeRF's ``int(n * 10 / 11)``; at least one frame
    trains. The exporter and the trainer share this split.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = math.ceil(round(n * val_fraction, 6))
    return max(n - n_val, min(n, 1))


def _array(t: pa.DataType, shape: tuple[int, ...]) -> pa.DataType:  # noqa: ARG001 (shape documents)
    # Variable-size lists on purpose: pyarrow (<= 25) writes a null fixed_size_list entry that it
    # cannot read back ("Expected all lists to be of size=N"), and frames without a face are null.
    return pa.list_(t)


FRAME_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("person", pa.int16(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64()),
        pa.field("role", pa.string()),  # speaker / listener / silent (several people), solo (one person)
        pa.field("speaking", pa.bool_()),  # solo: voice activity; several people: this person's turn
        pa.field("speaking_confidence", pa.float32()),  # posterior of the frame's speaker decision (several people)
        pa.field("face_found", pa.bool_()),
        pa.field("error", pa.string()),  # why the face features are null
        pa.field("image_jpeg", pa.binary()),
        pa.field("image_size", pa.int32()),
        pa.field("crop_box", _array(pa.int32(), (4,))),  # source-frame pixels
        pa.field("bbox", _array(pa.float32(), (4,))),
        pa.field("landmarks_2d", _array(pa.float32(), (68, 2))),
        pa.field("landmarks_mesh", _array(pa.float32(), (N_MESH, 3))),
        pa.field("pose_c2w", _array(pa.float32(), (4, 4))),
        pa.field("focal", pa.float32()),
        pa.field("cx", pa.float32()),
        pa.field("cy", pa.float32()),
        pa.field("expression", _array(pa.float32(), (N_EXPRESSION,))),
        pa.field("blendshapes", _array(pa.float32(), (N_BLENDSHAPES,))),
        pa.field("eye_ratio", pa.float32()),
        pa.field("mouth_opening", pa.float32()),
        pa.field("lips_rect", _array(pa.int32(), (4,))),
        pa.field("face_rect", _array(pa.int32(), (4,))),
        pa.field("parsing_png", pa.binary()),
        pa.field("reprojection_error", pa.float32()),
        pa.field("audio_features", _array(pa.float32(), (AUDIO_WINDOW, AUDIO_MELS))),
        pa.field("audio_valid", pa.bool_()),
        pa.field("zcr", pa.float32()),
        pa.field("rms", pa.float32()),
    ]
)

PERSON_TYPE = pa.struct(
    [
        pa.field("identity", pa.string()),
        pa.field("person", pa.int16()),
        pa.field("n_frames", pa.int32()),  # frames with this person's face
        pa.field("n_rows", pa.int32()),  # rows written to frames/identity=<identity>/
        pa.field("crop_box", pa.list_(pa.int32())),
        pa.field("focal", pa.float32()),
        pa.field("cx", pa.float32()),
        pa.field("cy", pa.float32()),
        pa.field("near", pa.float32()),
        pa.field("far", pa.float32()),
        pa.field("identity_coeffs", pa.list_(pa.float32())),
        pa.field("reprojection_error_px", pa.float32()),
        pa.field("background_png", pa.binary()),
    ]
)
"""One person of a clip: what it contributes to its identity (``identities/`` is aggregated from these)."""

CLIP_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("identity", pa.string()),  # as listed (people of multi-person clips get _p<k>)
        pa.field("role", pa.string()),  # as listed in a manifest (speaker / listener / solo)
        pa.field("role_overrides", pa.string()),  # hand-checked speakers, JSON [[start_s, end_s, speaker], ...]
        pa.field("status", pa.string(), nullable=False),  # ok / failed
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # input (the clip itself is bad) / internal (may be transient)
        pa.field("warning", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("has_audio", pa.bool_()),
        pa.field("sample_rate", pa.int32()),
        pa.field("audio_duration_s", pa.float64()),
        pa.field("n_frames", pa.int32()),
        pa.field("n_people", pa.int32()),
        pa.field("content_box", _array(pa.int32(), (4,))),  # picture area inside black borders
        pa.field("builder_version", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("config_json", pa.string()),
        pa.field("probe_s", pa.float64()),
        pa.field("audio_decode_s", pa.float64()),
        pa.field("landmarks_s", pa.float64()),
        pa.field("audio_features_s", pa.float64()),
        pa.field("speakers_s", pa.float64()),
        pa.field("fit_s", pa.float64()),
        pa.field("parse_encode_s", pa.float64()),
        pa.field("download_s", pa.float64()),
        pa.field("write_s", pa.float64()),
        pa.field("total_s", pa.float64()),
        pa.field("worker", pa.string()),  # host:pid that built the clip
        pa.field("worker_peak_rss_mb", pa.float64()),  # the worker process's peak memory so far
        pa.field("built_at", pa.timestamp("s", tz="UTC")),
        pa.field("people", pa.list_(PERSON_TYPE)),
    ]
)

IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("clips", pa.list_(pa.string())),  # clip_ids, sorted
        pa.field("n_clips", pa.int32()),
        pa.field("n_rows", pa.int64()),  # rows in frames/identity=<identity>/
        pa.field("n_frames", pa.int64()),  # of which with a face
        pa.field("image_size", pa.int32()),
        pa.field("background_png", pa.binary()),  # per-pixel median of the clips' backgrounds
        pa.field("identity_coeffs", pa.list_(pa.float32())),  # frame-weighted mean over clips
        pa.field("focal", pa.float32()),  # frame-weighted mean, crop pixels
        pa.field("cx", pa.float32()),
        pa.field("cy", pa.float32()),
        pa.field("near", pa.float32()),  # min over clips (metres)
        pa.field("far", pa.float32()),  # max over clips
        pa.field("focal_spread", pa.float32()),  # std of the clips' focal lengths (0 for one clip)
        pa.field("reprojection_error_px", pa.float32()),
        pa.field("builder_version", pa.string()),
    ]
)


def _cell(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def frames_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A ``frames/`` Arrow table from worker rows (arrays are flattened)."""
    cols = {f.name: [_cell(r.get(f.name)) for r in rows] for f in FRAME_SCHEMA}
    return pa.Table.from_pydict(cols, schema=FRAME_SCHEMA)


def clips_table(summaries: list[dict[str, Any]]) -> pa.Table:
    """A ``clips/`` Arrow table from clip summaries (with ``status`` and ``error`` set)."""
    cols = {f.name: [_cell(s.get(f.name)) for s in summaries] for f in CLIP_SCHEMA}
    return pa.Table.from_pydict(cols, schema=CLIP_SCHEMA)


def identities_table(rows: list[dict[str, Any]]) -> pa.Table:
    """An ``identities/`` Arrow table."""
    cols = {f.name: [_cell(r.get(f.name)) for r in rows] for f in IDENTITY_SCHEMA}
    return pa.Table.from_pydict(cols, schema=IDENTITY_SCHEMA)


def array(row: dict[str, Any], column: str) -> np.ndarray | None:
    """A stored array column of one row, reshaped to its documented shape."""
    value = row.get(column)
    if value is None:
        return None
    return np.asarray(value).reshape(FRAME_SHAPES[column])
