"""An identity's per-frame expression features for JEAN's expression transformer, read from a dataset.

JEAN feeds 2048-d emotion-recognition features (EMOCA), whose weights cannot be had here. The feature sets built
from what the dataset has (the choice is measured by ``benchmarks/expression.py``; docs/decisions.md, 'JEAN'):

* ``geometric``: MediaPipe's 52 blendshapes, the 57 ICT expression coefficients, eye openness and mouth opening;
* ``blendshapes``: the blendshapes alone;
* ``ict``: the 3DMM expression alone (the paper's ablation (d), which failed on 3DMM parameters).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.audio_lip_data import stack_column
from pipelines.dataset import Dataset
from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW
from pipelines.storage import S3Options
from workers.landmarks import BLENDSHAPE_NAMES

COLUMNS = ["clip_id", "frame_index", "face_found", "blendshapes", "expression", "eye_ratio", "mouth_opening",
           "audio_features", "audio_valid"]
FEATURE_SETS = ("geometric", "blendshapes", "ict")


def blendshape_index(names: list[str]) -> list[int]:
    """Columns of the ``blendshapes`` array (``_neutral`` first, then MediaPipe's order) of the named shapes."""
    return [1 + BLENDSHAPE_NAMES.index(n) for n in names]


def read_expression_rows(dataset: str, identity: str, s3_endpoint: str | None = None) -> dict[str, np.ndarray]:
    """The identity's frames with a face, in (clip, frame) order: ``blendshapes`` [N, 52], ``expression`` [N, 57],
    ``eye_ratio``, ``mouth_opening``, ``mel`` [N, 16, 80], ``audio_valid``, ``clip`` (int per clip, in the
    dataset's clip order), ``frame``.

    Raises:
        KeyError: no such identity; ValueError: no frame with a face.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    clips = ds.identity_clips(identity)
    tables = [b for b in ds.iter_frames(identity, COLUMNS, batch_rows=1024)]
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
    return {k: v[order] for k, v in out.items()}


def expression_features(rows: dict[str, np.ndarray], name: str = "geometric") -> np.ndarray:
    """One feature set (:data:`FEATURE_SETS`) of :func:`read_expression_rows`' rows: float32 [N, F]."""
    if name == "geometric":
        parts = [rows["blendshapes"], rows["expression"], rows["eye_ratio"][:, None], rows["mouth_opening"][:, None]]
    elif name == "blendshapes":
        parts = [rows["blendshapes"]]
    elif name == "ict":
        parts = [rows["expression"]]
    else:
        raise ValueError(f"unknown expression features {name!r} (known: {', '.join(FEATURE_SETS)})")
    return np.concatenate(parts, 1).astype(np.float32)
