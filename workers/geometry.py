"""Landmark geometry: eye openness, mouth opening, lips and face rectangles, the person crop."""

from __future__ import annotations

import numpy as np

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)


def _eye_aspect(eye: np.ndarray) -> np.ndarray:
    """Eye aspect ratio of [..., 6, 2] points (corner, 2 upper, corner, 2 lower)."""
    v1 = np.linalg.norm(eye[..., 1, :] - eye[..., 5, :], axis=-1)
    v2 = np.linalg.norm(eye[..., 2, :] - eye[..., 4, :], axis=-1)
    h = np.linalg.norm(eye[..., 0, :] - eye[..., 3, :], axis=-1)
    return (v1 + v2) / (2.0 * np.maximum(h, 1e-6))


def eye_ratio(lms: np.ndarray) -> np.ndarray:
    """Eye openness: the mean eye aspect ratio of both eyes (open ~0.25-0.35, closed ~0.05).

    RAD-NeRF conditions its head field on an eye-area value per frame; this is that value computed
    from landmarks (RAD-NeRF reads it from OpenFace's AU45 or the eye area of the 68 points).

    Args:
        lms: [..., 68, 2] landmarks.

    Returns:
        [...] float32.
    """
    return ((_eye_aspect(lms[..., RIGHT_EYE, :]) + _eye_aspect(lms[..., LEFT_EYE, :])) / 2).astype(np.float32)


def mouth_opening(lms: np.ndarray) -> np.ndarray:
    """Inner-lip gap (points 62-66) divided by mouth width (48-54): [..., 68, 2] -> [...]."""
    gap = np.linalg.norm(lms[..., 62, :] - lms[..., 66, :], axis=-1)
    width = np.linalg.norm(lms[..., 48, :] - lms[..., 54, :], axis=-1)
    return (gap / np.maximum(width, 1e-6)).astype(np.float32)


def rect_of(points: np.ndarray, pad: float, width: int, height: int) -> np.ndarray:
    """A box around points, padded by a fraction of its size, clipped to the image.

    Args:
        points: [P, 2] pixels.
        pad: fraction of the box's larger side added on every side.
        width, height: image size.

    Returns:
        int32 [4] (x0, y0, x1, y1), x1/y1 exclusive.
    """
    lo, hi = points.min(0), points.max(0)
    p = pad * float(max(hi - lo))
    x0, y0 = np.floor(lo - p)
    x1, y1 = np.ceil(hi + p) + 1
    return np.array(
        [np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height)], np.int32
    )


def lips_rect(lms: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box around the lips (points 48-67), padded 15%: int32 [4] (x0, y0, x1, y1)."""
    return rect_of(lms[48:68], 0.15, width, height)


def face_rect(lms: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box around the face (all 68 points), padded 10%: int32 [4] (x0, y0, x1, y1)."""
    return rect_of(lms, 0.10, width, height)


def person_crop_box(face_boxes: np.ndarray, width: int, height: int, scale: float = 3.0) -> np.ndarray:
    """One square crop for a person over a whole clip (the camera of a NeRF must not move).

    The square is ``scale`` times the median face size, centred horizontally on the median face
    centre and placed so the face sits in its upper part (room for neck and shoulders). It is
    shrunk to fit the frame and shifted inside it.

    Args:
        face_boxes: [N, 4] face boxes (x0, y0, x1, y1) of the person over the clip.
        width, height: frame size.
        scale: crop side in face sizes.

    Returns:
        int32 [4] (x0, y0, x1, y1) with x1 - x0 == y1 - y0.
    """
    sizes = np.maximum(face_boxes[:, 2] - face_boxes[:, 0], face_boxes[:, 3] - face_boxes[:, 1])
    size = float(np.median(sizes))
    cx = float(np.median((face_boxes[:, 0] + face_boxes[:, 2]) / 2))
    cy = float(np.median((face_boxes[:, 1] + face_boxes[:, 3]) / 2))
    side = int(round(min(scale * size, width, height)))
    side = max(side, 1)
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - 0.42 * side))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return np.array([x0, y0, x0 + side, y0 + side], np.int32)


RIGID_POINTS = np.array([36, 39, 42, 45, 27, 28, 29, 30, 33])
"""Eye corners and nose (bridge and tip): points that move with the head but not with expressions."""


def landmark_jitter(lms: np.ndarray) -> float:
    """Frame-to-frame landmark noise, as a fraction of the inter-ocular distance.

    For every frame whose neighbours are also present, the rigid points' (:data:`RIGID_POINTS`) distance
    from the mean of their positions in the previous and next frames (a second difference: smooth head
    motion cancels out, per-frame noise does not), averaged over the points and divided by the distance
    between the outer eye corners (36, 45); the median over frames. It measures how steady a landmark
    source is on a clip, e.g. on small faces against the same faces at full size. For independent noise of
    standard deviation ``s`` per coordinate it is about ``1.5 * s / iod``.

    Args:
        lms: [N, 68, 2] landmarks; rows of NaN for frames without a face.

    Returns:
        The median relative jitter; NaN when no three consecutive frames have landmarks.
    """
    lms = np.asarray(lms, np.float64)
    if len(lms) < 3:
        return float("nan")
    pts = lms[:, RIGID_POINTS]
    second = pts[1:-1] - (pts[:-2] + pts[2:]) / 2
    dev = np.linalg.norm(second, axis=-1).mean(-1)
    iod = np.linalg.norm(lms[1:-1, 36] - lms[1:-1, 45], axis=-1)
    rel = dev / np.maximum(iod, 1e-6)
    rel = rel[np.isfinite(rel)]
    return float(np.median(rel)) if len(rel) else float("nan")
