"""One frame of a RAD-NeRF / ER-NeRF export: its image files, and what the export's tables need from it.

For frame ``i`` :func:`export_frame` writes ``ori_imgs/<i>.jpg`` and ``.lms``, ``parsing/<i>.png``,
``gt_imgs/<i>.jpg`` and ``torso_imgs/<i>.png``, resampled onto the export camera where the frame's own camera
differs. The decisions behind each file are in the docstring of :mod:`pipelines.export`, which drives the export
and writes the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipelines.schema import array
from workers.errors import ParleyError
from workers.landmarks import BLENDSHAPE_NAMES
from workers.parsing import BACKGROUND, HEAD, NECK, RADNERF_COLOURS, TORSO, decode_png

JPEG_QUALITY = 95
"""Quality of the JPEGs the export encodes (OpenCV's default, what RAD-NeRF's scripts get)."""
_PALETTE = np.array([RADNERF_COLOURS[k] for k in range(len(RADNERF_COLOURS))], np.uint8)  # label -> colour
_BLINK_INDEX = [1 + BLENDSHAPE_NAMES.index(n) for n in ("eyeBlinkLeft", "eyeBlinkRight")]  # after "_neutral"
_TORSO_EXTEND = 8 + 1  # rows a torso column is extended up into the head (RAD-NeRF's L)
_NECK_PUSH_DOWN = 4  # the neck colour is taken this far below its top pixel
_NECK_EXTEND = 48 + _NECK_PUSH_DOWN + 1
_NECK_DILATE = 3  # rows the neck is dilated up and down before extending it
_DARKEN = 0.98  # colour factor per extended row


class ExportError(ParleyError):
    """An identity cannot be exported (no usable frames, no background, a corrupt frame row)."""


@dataclass(frozen=True)
class Camera:
    """The export's one camera: focal length and principal point in pixels, the side of the square image."""

    focal: float
    cx: float
    cy: float
    size: int


@dataclass
class FrameOut:
    """What one exported frame gives the tables (pose, audio window, blink) and the report's counts."""

    img_id: int
    pose: np.ndarray  # [4, 4]
    audio: np.ndarray | None  # [16, 80]
    audio_valid: bool
    blink: float  # 0 open .. 1 closed
    blink_from_landmarks: bool
    resampled: bool
    time_s: float


def export_frame(row: dict[str, Any], img_id: int, cam: Camera, background: np.ndarray, out: Path,
                 open_eye: float) -> FrameOut:
    """Writes the image files of one frame."""
    where = f"clip {row['clip_id']} frame {row['frame_index']}"
    if not row.get("image_jpeg") or not row.get("parsing_png"):
        raise ExportError(f"{where}: a face but no image_jpeg / parsing_png")
    image = cv2.imdecode(np.frombuffer(row["image_jpeg"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"{where}: image_jpeg is not a JPEG")
    labels = decode_png(row["parsing_png"])
    lms = np.asarray(array(row, "landmarks_2d"), np.float64)
    if image.shape[:2] != (cam.size, cam.size) or labels.shape != image.shape[:2]:
        raise ExportError(f"{where}: image {image.shape[:2]} / parsing {labels.shape} is not {cam.size}x{cam.size}")
    if labels.max() >= len(_PALETTE):
        raise ExportError(f"{where}: parsing_png holds label {labels.max()}, not one of {sorted(RADNERF_COLOURS)}")
    scale_shift = _camera_change(row, cam)
    name = str(img_id)
    if scale_shift is None:
        (out / "ori_imgs" / f"{name}.jpg").write_bytes(row["image_jpeg"])
    else:
        image, labels, lms = _resample(image, labels, lms, *scale_shift)
        cv2.imwrite(str(out / "ori_imgs" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    np.savetxt(out / "ori_imgs" / f"{name}.lms", lms, "%f")
    # OpenCV array order on purpose: RAD-NeRF reads these with cv2.imread (see :mod:`pipelines.export`).
    cv2.imwrite(str(out / "parsing" / f"{name}.png"), np.take(_PALETTE, labels, axis=0))
    gt = np.where((labels == BACKGROUND)[..., None], background, image)
    cv2.imwrite(str(out / "gt_imgs" / f"{name}.jpg"), gt, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    cv2.imwrite(str(out / "torso_imgs" / f"{name}.png"), torso_rgba(gt, labels, background))
    blink, from_lms = _blink(row, open_eye)
    audio = array(row, "audio_features")
    return FrameOut(
        img_id=img_id, pose=np.asarray(array(row, "pose_c2w"), np.float32),
        audio=None if audio is None else np.asarray(audio, np.float32),
        audio_valid=audio is not None and row.get("audio_valid") is not False,
        blink=blink, blink_from_landmarks=from_lms, resampled=scale_shift is not None,
        time_s=float(row.get("time_s") or 0.0),
    )


def _camera_change(row: dict[str, Any], cam: Camera) -> tuple[float, float, float] | None:
    """(a, bx, by) of ``p' = a * p + b`` taking the frame's camera to the export camera; None if the same.

    Pixel coordinates are continuous (pixel centres at +0.5), as the landmarks and the projection are.
    """
    f, cx, cy = float(row["focal"]), float(row["cx"]), float(row["cy"])
    if abs(f - cam.focal) <= 1e-4 * cam.focal and abs(cx - cam.cx) <= 0.01 and abs(cy - cam.cy) <= 0.01:
        return None
    a = cam.focal / f
    return a, cam.cx - a * cx, cam.cy - a * cy


def _resample(image: np.ndarray, labels: np.ndarray, lms: np.ndarray, a: float, bx: float,
              by: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame seen through the export camera: image [S, S, 3], labels [S, S], landmarks [68, 2]."""
    # cv2 addresses pixel centres at integers: q = p - 0.5, so q' = a q + b + 0.5 (a - 1).
    m = np.array([[a, 0.0, bx + 0.5 * (a - 1)], [0.0, a, by + 0.5 * (a - 1)]], np.float64)
    size = (image.shape[1], image.shape[0])
    image = cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    labels = cv2.warpAffine(labels, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    return image, labels, lms * a + np.array([bx, by])


def _blink(row: dict[str, Any], open_eye: float) -> tuple[float, bool]:
    """Eye closure 0 (open) .. 1 (closed) and whether it came from landmarks (no blendshapes)."""
    scores = row.get("blendshapes")
    if scores is not None and len(scores) > max(_BLINK_INDEX):
        return float(np.clip(np.mean([scores[i] for i in _BLINK_INDEX]), 0.0, 1.0)), False
    ratio = row.get("eye_ratio")
    if ratio is None or not np.isfinite(ratio) or open_eye <= 0:
        return 0.0, True
    return float(np.clip(1.0 - ratio / open_eye, 0.0, 1.0)), True


def torso_rgba(gt: np.ndarray, labels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RAD-NeRF's torso image: BGRA [S, S, 4] of the neck and torso, alpha 0 elsewhere.

    The head is replaced by the background; torso and neck columns whose top pixel touches the head are
    extended upwards (their top colour, darkened 2% a row), so the torso layer has no hole under the chin
    when the head moves; the neck (dilated vertically first) is extended further and its extension blurred.

    Args:
        gt: BGR [S, S, 3] ground-truth image (background already replaced).
        labels: uint8 [S, S] parsing labels.
        background: BGR [S, S, 3].
    """
    head = labels == HEAD
    torso = labels == TORSO
    kernel = np.ones((2 * _NECK_DILATE + 1, 1), np.uint8)
    neck = cv2.dilate((labels == NECK).astype(np.uint8), kernel).astype(bool)
    img = np.where(head[..., None], background, gt)
    torso_fill = _extend_up(img, gt, torso, head, _TORSO_EXTEND, 0)
    neck_fill = _extend_up(img, gt, neck, head, _NECK_EXTEND, _NECK_PUSH_DOWN)
    img = np.where(neck_fill[..., None], cv2.GaussianBlur(img, (5, 5), 0), img)
    mask = torso | neck | torso_fill | neck_fill
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    return np.dstack([np.where(mask[..., None], img, 0).astype(np.uint8), alpha])


def _extend_up(dst: np.ndarray, src: np.ndarray, region: np.ndarray, head: np.ndarray, length: int,
               push_down: int) -> np.ndarray:
    """Paints ``length`` rows up from the top of each ``region`` column whose top pixel has head above it.

    The colour is ``src`` at the top pixel (``push_down`` rows lower where the column is long enough),
    darkened by :data:`_DARKEN` a row. Unlike RAD-NeRF, only head and ``region`` pixels are painted (a short
    head does not get neck colour painted over the background above it). Returns the bool [S, S] mask of the
    painted pixels.
    """
    painted = np.zeros(region.shape, bool)
    cols = np.flatnonzero(region.any(axis=0))
    if cols.size == 0:
        return painted
    top = region[:, cols].argmax(axis=0)
    keep = top > 0
    keep[keep] = head[top[keep] - 1, cols[keep]]
    cols, top = cols[keep], top[keep]
    if cols.size == 0:
        return painted
    start = top + np.minimum(region[:, cols].sum(axis=0) - 1, push_down)
    colour = src[start, cols].astype(np.float32)  # [m, 3]
    steps = np.arange(length)
    rows = start[None, :] - steps[:, None]  # [L, m]
    shade = (_DARKEN ** steps)[:, None, None] * colour[None]  # [L, m, 3]
    cc = np.broadcast_to(cols, rows.shape)
    valid = rows >= 0
    valid[valid] = head[rows[valid], cc[valid]] | region[rows[valid], cc[valid]]  # never into the background
    rr, cc = rows[valid], cc[valid]
    dst[rr, cc] = shade[valid].round().clip(0, 255).astype(np.uint8)
    painted[rr, cc] = True
    return painted
