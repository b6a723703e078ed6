"""Quality-control images: contact sheets of frames with landmarks, pose axes and parsing overlaid."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pipelines.schema import array
from workers.parsing import HEAD, NECK, TORSO, decode_png
from workers.speakers import best_lag_correlation as best_lag_correlation  # one definition (audio-visual sync)

_PARSING_TINT = {HEAD: (255, 60, 60), NECK: (60, 255, 60), TORSO: (60, 60, 255)}


def pose_axes(pose_c2w: np.ndarray, focal: float, cx: float, cy: float, length: float = 0.06) -> np.ndarray:
    """Pixels [4, 2] of the head origin and the tips of its x, y, z axes (``length`` metres)."""
    w2c = np.linalg.inv(pose_c2w)
    pts = np.array([[0, 0, 0, 1], [length, 0, 0, 1], [0, length, 0, 1], [0, 0, length, 1]], np.float64)
    cam = (w2c @ pts.T).T[:, :3]
    z = np.maximum(-cam[:, 2], 1e-6)
    return np.stack([cx + focal * cam[:, 0] / z, cy - focal * cam[:, 1] / z], -1)


def annotate(row: dict[str, Any]) -> np.ndarray:
    """One frame row drawn as RGB [S, S, 3]: crop, parsing tint, 68 landmarks, pose axes, eye ratio."""
    bgr = cv2.imdecode(np.frombuffer(row["image_jpeg"], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"frame {row.get('frame_index')} of clip {row.get('clip_id')}: image_jpeg is not a JPEG")
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not row.get("face_found"):
        cv2.putText(img, str(row.get("error") or "no face"), (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 0, 0), 2)
        return img
    if row.get("parsing_png"):
        labels = decode_png(row["parsing_png"])
        tint = img.copy()
        for k, c in _PARSING_TINT.items():
            tint[labels == k] = c
        img = cv2.addWeighted(img, 0.65, tint, 0.35, 0)
    lms, c2w, lips = array(row, "landmarks_2d"), array(row, "pose_c2w"), array(row, "lips_rect")
    if lms is None or c2w is None or lips is None:
        raise ValueError(f"frame {row.get('frame_index')}: face_found but landmarks/pose/lips are null")
    r = max(1, img.shape[0] // 256)
    for x, y in lms:
        cv2.circle(img, (int(round(x)), int(round(y))), r + 1, (255, 255, 0), -1, cv2.LINE_AA)
    o, ax, ay, az = pose_axes(c2w, row["focal"], row["cx"], row["cy"]).round().astype(int)
    for tip, colour in ((ax, (255, 0, 0)), (ay, (0, 255, 0)), (az, (0, 128, 255))):
        cv2.line(img, tuple(o), tuple(tip), colour, 2 * r, cv2.LINE_AA)
    x0, y0, x1, y1 = lips
    cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (255, 0, 255), r)
    label = f"#{row['frame_index']} eye {row['eye_ratio']:.2f} err {row['reprojection_error']:.1f}px"
    cv2.putText(img, label, (8, 24 * r), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * r, (255, 255, 255), r, cv2.LINE_AA)
    return img


def contact_sheet(rows: list[dict[str, Any]], n: int = 12, cols: int = 4, tile: int = 256) -> np.ndarray:
    """An RGB grid of ``n`` frames spread evenly over ``rows``, each annotated (see :func:`annotate`)."""
    if not rows:
        return np.zeros((tile, tile, 3), np.uint8)
    picks = np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int))
    tiles = [cv2.resize(annotate(rows[i]), (tile, tile), interpolation=cv2.INTER_AREA) for i in picks]
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(grid, axis=0)


def write_png(path: str, image: np.ndarray) -> None:
    """Write an RGB image as PNG."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")
