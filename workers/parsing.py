"""Head / neck / torso / background parsing from a person mask and face landmarks, and backgrounds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from workers import assets, mediapipe_tasks
from workers.labels import BACKGROUND, HEAD, NECK, TORSO

LABELS = {BACKGROUND: "background", HEAD: "head", NECK: "neck", TORSO: "torso"}
# RAD-NeRF / AD-NeRF parsing colours (RGB): head red, neck green, torso blue, background white.
RADNERF_COLOURS = {BACKGROUND: (255, 255, 255), HEAD: (255, 0, 0), NECK: (0, 255, 0), TORSO: (0, 0, 255)}


class PersonSegmenter:
    """MediaPipe selfie segmentation (person vs background) through the Tasks ImageSegmenter.

    Args:
        model_path: a selfie segmentation ``.tflite``; default from the asset registry.
    """

    def __init__(self, model_path: str | Path | None = None):
        from mediapipe.tasks.python import BaseOptions, vision

        opts = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model_path or assets.resolve("selfie_segmentation"))),
            running_mode=vision.RunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        with mediapipe_tasks.quiet_native_logs():
            self._seg = vision.ImageSegmenter.create_from_options(opts)
        mediapipe_tasks.close_at_exit(self)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Person probability float32 [H, W] in [0, 1] of an RGB uint8 image [H, W, 3]."""
        import mediapipe as mp

        result = self._seg.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        mask = result.confidence_masks[-1].numpy_view()
        return np.asarray(mask, np.float32).reshape(image.shape[:2])

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None


def parse(person: np.ndarray, lms: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Label each pixel head / neck / torso / background.

    Head: the person pixels above the jaw (the jaw line between its lower corners, the chin's height
    beside them) or inside a head oval built from the 68 landmarks (the jaw line below, the jaw
    mirrored above the eyes), plus the landmarks' own hull. Hair beside the face down to the chin is
    head: it moves with the head, and the 3D head field models it far better than the torso's 2D
    deformation does (as face parsers that give hair its own class, merged into the head, do).
    Neck: person pixels below the jaw, between the jaw's lower corners, down to 0.7 face heights
    under the chin. Torso: the remaining person pixels (shoulders, hair below the chin).

    Args:
        person: float32 [H, W] person probability.
        lms: [68, 2] landmarks in the same pixel frame.
        threshold: probability above which a pixel is the person.

    Returns:
        uint8 [H, W] labels (:data:`BACKGROUND`, :data:`HEAD`, :data:`NECK`, :data:`TORSO`).
    """
    h, w = person.shape
    is_person = person > threshold
    jaw = lms[0:17].astype(np.float32)
    eye_y = float(lms[36:48, 1].mean())
    centre_x = float(lms[27:31, 0].mean())
    face_h = float(jaw[:, 1].max() - lms[17:27, 1].min())
    # Widen the jaw's upper points to take in the ears, and mirror the jaw above the eyes.
    widen = np.ones(17, np.float32)
    widen[[0, 1, 2, 14, 15, 16]] = 1.18
    jaw[:, 0] = centre_x + (jaw[:, 0] - centre_x) * widen
    top = jaw.copy()
    top[:, 0] = centre_x + (jaw[:, 0] - centre_x) * 1.1
    top[:, 1] = eye_y - (jaw[:, 1] - eye_y) * 1.15
    oval = cv2.convexHull(np.concatenate([jaw, top]).astype(np.int32))
    head_zone = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(head_zone, oval, 1)
    face_hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(face_hull, cv2.convexHull(lms.astype(np.int32)), 1)
    x0, x1 = float(jaw[3, 0]), float(jaw[13, 0])
    chin_y = float(jaw[:, 1].max())
    above = np.array([[0, 0], [w, 0], [w, chin_y], [x1, chin_y], *jaw[13:2:-1], [x0, chin_y], [0, chin_y]])
    cv2.fillPoly(head_zone, [above.round().astype(np.int32)], 1)
    head = (head_zone.astype(bool) & is_person) | face_hull.astype(bool)

    neck_zone = np.zeros((h, w), np.uint8)
    poly = np.array([*jaw[3:14], [x1, chin_y + 0.7 * face_h], [x0, chin_y + 0.7 * face_h]], np.int32)
    cv2.fillPoly(neck_zone, [poly], 1)
    neck = neck_zone.astype(bool) & is_person & ~head

    labels = np.full((h, w), BACKGROUND, np.uint8)
    labels[is_person] = TORSO
    labels[neck] = NECK
    labels[head] = HEAD
    return labels


def encode_png(labels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 label image."""
    ok, buf = cv2.imencode(".png", labels)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 labels [H, W] from PNG bytes.

    Raises:
        ValueError: the bytes are not an image.
    """
    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError("parsing_png does not hold a PNG image")
    return labels


def colourise(labels: np.ndarray) -> np.ndarray:
    """RAD-NeRF-style RGB parsing image [H, W, 3] from labels [H, W]."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    for k, c in RADNERF_COLOURS.items():
        out[labels == k] = c
    return out


class BackgroundAccumulator:
    """Estimates a clip's background image from background pixels of sampled frames.

    Each pixel takes the median over the sampled frames where it is background (away from the
    person's edge); pixels never seen are inpainted.

    Args:
        size: (height, width) of the images.
        max_samples: frames kept (the caller decides which; a stride over the clip is best).
    """

    def __init__(self, size: tuple[int, int], max_samples: int = 24):
        self.size = size
        self.max_samples = max_samples
        self._images: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []

    def add(self, image: np.ndarray, labels: np.ndarray) -> None:
        """Add an RGB frame [H, W, 3] and its labels [H, W]."""
        if len(self._images) >= self.max_samples:
            return
        bg = (labels == BACKGROUND).astype(np.uint8)
        bg = cv2.erode(bg, np.ones((9, 9), np.uint8))
        self._images.append(image.copy())
        self._masks.append(bg.astype(bool))

    def result(self) -> np.ndarray:
        """RGB uint8 [H, W, 3] background."""
        h, w = self.size
        if not self._images:
            return np.zeros((h, w, 3), np.uint8)
        # Masked per-pixel median without NaN arithmetic: non-background samples sort to the end
        # (value 1000), then each pixel takes its middle valid sample.
        stack = np.stack(self._images).astype(np.uint16)  # [S, H, W, 3]
        masks = np.stack(self._masks)  # [S, H, W]
        stack[~masks] = 1000
        stack.sort(axis=0)
        count = masks.sum(0)  # [H, W]
        mid = np.maximum(count - 1, 0) // 2
        med = np.take_along_axis(stack, mid[None, :, :, None].repeat(3, -1), axis=0)[0]
        unseen = count == 0
        med = np.where(unseen[..., None], 0, med).astype(np.uint8)
        if unseen.any() and not unseen.all():
            med = cv2.inpaint(med, unseen.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        return med
