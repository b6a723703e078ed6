"""An expression source for cross-driving (``parley render --expression B.mp4``): a video of the avatar's person
whose per-frame expression features, head poses and eye openness drive the render while the audio comes from
elsewhere. The video goes through the same per-clip extraction as a dataset build (:class:`workers.clip.ClipProcessor`),
so its features are those the model was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.jean_data import expression_features, face_crops, nearest_earlier
from nerf.data import normalise_eye

log = logging.getLogger(__name__)

OTHER_PERSON = 0.15
"""Distance between 3DMM identity coefficients above which an expression source is taken for another person (a
warning): clips of one person in the shared corpus lie 0.04-0.12 apart, two people's median is 0.21; the fits are
too weak to tell everyone apart, so it warns instead of refusing (docs/decisions.md, 'JEAN')."""


@dataclass
class ExpressionSource:
    """One video's per-frame driving signals, one row per video frame (frames without a face take the nearest
    earlier frame's, else the next one's)."""

    path: str
    features: np.ndarray
    """float32 [T, F] the named feature set."""
    poses: np.ndarray
    """float32 [T, 4, 4] camera-to-world of the source's head."""
    eye: np.ndarray
    """float32 [T] eye openness (the eye ratio over the source's own open-eye value, as in training)."""
    fps: float
    identity_coeffs: np.ndarray
    """float32 [K] the source person's 3DMM shape coefficients."""

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def frames_for(self, n: int, fps: float) -> np.ndarray:
        """int64 [n]: the source frame shown at each of ``n`` output frames at ``fps``, by time; past its end the
        source plays backwards, then forwards again (ping-pong: no jump), so a short source holds the render."""
        from nerf.avatar import pingpong

        t = np.round(np.arange(n) / fps * self.fps).astype(np.int64)
        return pingpong(int(t.max()) + 1 if n else 0, len(self))[t] if n else np.zeros(0, np.int64)

    def person_distance(self, coeffs: np.ndarray | None) -> float:
        """Distance of the source's identity coefficients to ``coeffs`` (NaN when either is unknown)."""
        if coeffs is None or coeffs.shape != self.identity_coeffs.shape:
            return float("nan")
        return float(np.linalg.norm(self.identity_coeffs - coeffs))


def read_expression_source(path: str | Path, feature_set: str) -> ExpressionSource:
    """Extract an expression source's per-frame signals from a video (its first person).

    Raises:
        workers.errors.ClipError: the video cannot be read, or shows no face.
    """
    from workers.clip import ClipProcessor

    proc = ClipProcessor()
    try:
        result = proc(str(path), identity="expression_source")
    finally:
        proc.close()
    rows = sorted((r for r in result.rows if int(r.get("person") or 0) == 0), key=lambda r: int(r["frame_index"]))
    have = [k for k, r in enumerate(rows) if r.get("face_found") and r.get("blendshapes") is not None]
    if not have:
        from workers.errors import ClipError

        raise ClipError(str(path), "no frame with a face and expression features")
    pick = np.asarray(have)[nearest_earlier(np.asarray(have), np.arange(len(rows)))]
    got = [rows[k] for k in pick.tolist()]

    def arr(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([np.asarray(r[key], np.float32).reshape(shape) for r in got])

    eye_raw = np.asarray([np.nan if r.get("eye_ratio") is None else r["eye_ratio"] for r in got], np.float32)
    eye, open_eye = normalise_eye(eye_raw)
    table = {"blendshapes": arr("blendshapes", (52,)), "expression": arr("expression", (57,)),
             "eye_ratio": np.nan_to_num(eye_raw, nan=open_eye),
             "mouth_opening": np.asarray([r.get("mouth_opening") or 0.0 for r in got], np.float32)}
    if feature_set == "crop":
        table["crop"] = face_crops([r["image_jpeg"] for r in got], arr("landmarks_2d", (68, 2)))
    person = result.people[0] if result.people else None
    return ExpressionSource(
        path=str(path), features=expression_features(table, feature_set), poses=arr("pose_c2w", (4, 4)),
        eye=eye,
        fps=float(result.summary.get("fps") or 25.0),
        identity_coeffs=np.asarray(person.identity_coeffs if person else [], np.float32))
