"""Landmarks for faces of every size: the full-frame landmarker plus crops around small, far faces.

MediaPipe's FaceLandmarker finds faces with its short-range detector, which sees only faces at selfie
distance: in a wide 1280x720 shot of people at a table (faces 48-160 px wide) it finds none.
:class:`FaceSearch` keeps the full-frame landmarker, tracking one face, for every frame (a solo clip's face gets
exactly the landmarks it got before) and adds a path for the other faces, small or not:

* now and then (the first frame, every ``detect_interval_ms``, and right after a small face is lost)
  MediaPipe's full-range face detector looks at the whole frame (in overlapping tiles when the frame
  is larger than ``tile`` px, so faces down to ~40 px stay above its resolution limit);
* each detected face that the full-frame face does not cover becomes a track: every frame a square around its
  last box (``crop_scale`` times the face) is resized to ``crop_size`` px and given to the track's
  own landmarker in video mode (it tracks between frames like the full-frame one), and the result is
  mapped back to frame pixels;
* a track that loses its face ends (the next detector run, one frame later, may find it again); a
  track whose face the full-frame landmarker now finds, or that duplicates another track, is merged.
  When a track's face is taken over by the full-frame landmarker, the track's landmarks stand in for its
  first :data:`HANDOVER_FRAMES` frames (the full-frame landmarker's first frames on a face are rough).

The output is the same :class:`~workers.landmarks.Face` objects in frame pixels, so callers (the
clip worker's :class:`~workers.landmarks.FaceTracker`) need nothing new. A crop face's
``transform`` is the head pose seen by the crop's virtual camera (its rotation is close to the full
frame's; its translation is in crop units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from workers import assets, mediapipe_tasks
from workers.landmarks import (
    Face,
    FanLandmarker,
    LandmarkBackend,
    MediaPipeLandmarker,
    create_face_landmarker,
    faces_from_result,
)

LOSS_GAP_MS = 200
"""Least time between two detector runs that a lost track asks for (a face that the detector sees but the
landmarker keeps losing must not cost a detector run every frame)."""

HANDOVER_FRAMES = 3
"""Frames a track's face replaces the full-frame face that found the same face, before the track ends."""


@dataclass
class _SmallTrack:
    landmarker: Any
    box: np.ndarray
    """float32 [4] (x0, y0, x1, y1): the face's last box in frame pixels."""
    handover: int = 0
    """Frames the full-frame landmarker has also found this face."""


def _centre_inside(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the centre of box ``a`` lies inside box ``b``."""
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return bool(b[0] <= cx <= b[2] and b[1] <= cy <= b[3])


def same_face(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two boxes (x0, y0, x1, y1) are the same face: either one's centre lies inside the other."""
    return _centre_inside(a, b) or _centre_inside(b, a)


def tiles(width: int, height: int, tile: int = 1280, overlap: float = 0.15) -> list[tuple[int, int, int, int]]:
    """Areas the detector looks at: the whole frame, plus overlapping tiles when it is larger than ``tile``.

    The detector sees its input at 192x192, so a 48-px face in a 1920-px frame shrinks to under 5 px;
    tiles of at most ~``tile * (1 + overlap)`` px keep it at ~8 px, where it is found with a good score.
    """
    areas = [(0, 0, width, height)]
    nx, ny = math.ceil(width / tile), math.ceil(height / tile)
    if nx * ny == 1:
        return areas
    tw = min(width, int(math.ceil(width / nx * (1 + overlap))))
    th = min(height, int(math.ceil(height / ny * (1 + overlap))))
    for j in range(ny):
        y0 = 0 if ny == 1 else round(j * (height - th) / (ny - 1))
        for i in range(nx):
            x0 = 0 if nx == 1 else round(i * (width - tw) / (nx - 1))
            areas.append((x0, y0, x0 + tw, y0 + th))
    return areas


class FaceSearch:
    """MediaPipe face landmarks of large and small faces: a :class:`~workers.landmarks.LandmarkBackend`.

    Args:
        max_faces: most faces per frame (full-frame faces first, then small faces by detector score).
        model_path: a ``face_landmarker.task`` file; default from the asset registry.
        detector_path: the full-range face detector; default the ``face_detector_full_range`` asset.
        min_confidence: the landmarkers' detection / presence / tracking thresholds.
        detector_confidence: the full-range detector's threshold (its candidates are checked by the
            landmarker, so it can be lower than ``min_confidence``).
        detect_interval_ms: time between detector runs while there is room for more faces.
        crop_scale: crop side in face sizes (room for the landmarker's own detector around the face).
        crop_size: side in px of the square crop the landmarker sees.
        tile: frames larger than this (px) are searched in tiles too, see :func:`tiles`.
    """

    name = "mediapipe"

    def __init__(
        self,
        max_faces: int = 1,
        model_path: str | Path | None = None,
        detector_path: str | Path | None = None,
        min_confidence: float = 0.5,
        detector_confidence: float = 0.4,
        detect_interval_ms: int = 500,
        crop_scale: float = 2.0,
        crop_size: int = 256,
        tile: int = 1280,
    ):
        self.max_faces = max_faces
        # One face on the full frame: asked for more, MediaPipe's landmarker re-runs its detector on every frame and
        # moves even a lone face's landmarks (up to 16 px on RD_Radio2_000; mouth-audio correlation 0.27 -> 0.21).
        # Every other face is a crop track.
        self.full = MediaPipeLandmarker(1, model_path, min_confidence)
        self.model_path = self.full.model_path
        self.detector_path = str(detector_path or assets.resolve("face_detector_full_range"))
        self.min_confidence = min_confidence
        self.detector_confidence = detector_confidence
        self.detect_interval_ms = detect_interval_ms
        self.crop_scale = crop_scale
        self.crop_size = crop_size
        self.tile = tile
        self._detector: Any = None
        self._tracks: list[_SmallTrack] = []
        self._idle: list[Any] = []  # landmarkers whose last frame had no face: no tracking state left
        self._last_ts = -1
        self._last_search_ts: int | None = None
        self._lost = False
        mediapipe_tasks.close_at_exit(self)

    # lifecycle ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all tracks before the next clip (timestamps start again)."""
        self.full.reset()
        self._drop_tracks()

    def close(self) -> None:
        """Release every MediaPipe task."""
        self.full.close()
        self._drop_tracks()
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def _drop_tracks(self) -> None:
        for lm in [t.landmarker for t in self._tracks] + self._idle:
            lm.close()
        self._tracks, self._idle = [], []
        self._last_ts, self._last_search_ts, self._lost = -1, None, False

    def _new_landmarker(self) -> Any:
        if self._idle:
            return self._idle.pop()
        return create_face_landmarker(self.model_path, 1, self.min_confidence)

    def _release(self, landmarker: Any, clean: bool) -> None:
        """Keep a landmarker for the next track if its last frame had no face, else close it."""
        if clean and len(self._idle) < self.max_faces:
            self._idle.append(landmarker)
        else:
            landmarker.close()

    # per frame ------------------------------------------------------------------------------------
    def detect(self, frame: np.ndarray, timestamp_ms: int) -> list[Face]:
        """Faces in one RGB frame ``[H, W, 3]`` uint8, large (full frame) and small (crops), frame pixels."""
        if timestamp_ms <= self._last_ts:
            self._drop_tracks()  # a new stream: video-mode landmarkers need increasing timestamps
        self._last_ts = timestamp_ms
        faces = self.full.detect(frame, timestamp_ms)[: self.max_faces]
        small: list[Face] = []
        kept: list[_SmallTrack] = []
        for track in self._tracks:
            face = self._landmark_crop(track.landmarker, frame, track.box, timestamp_ms)
            if face is None:
                self._lost = True
                self._release(track.landmarker, clean=True)
                continue
            dup = next((j for j, f in enumerate(faces) if same_face(face.bbox, f.bbox)), None)
            if dup is not None and track.handover < HANDOVER_FRAMES:
                # The full-frame landmarker just found this face: its first frames start from a detector box and
                # are off by up to ~20% of the face; the track's are settled. Hand over after a few frames.
                track.handover += 1
                faces[dup] = face
                track.box = face.bbox
                kept.append(track)
            elif dup is not None or any(same_face(face.bbox, f.bbox) for f in small):
                self._release(track.landmarker, clean=False)  # merged into a full-frame face or a track
            else:
                track.box = face.bbox
                kept.append(track)
                small.append(face)
        self._tracks = kept
        room = self.max_faces - len(faces) - len(small)
        if room > 0 and self._search_due(timestamp_ms):
            self._last_search_ts, self._lost = timestamp_ms, False
            for box in self._search(frame):
                if room == 0:
                    break
                if any(same_face(box, f.bbox) for f in faces + small):
                    continue
                landmarker = self._new_landmarker()
                face = self._landmark_crop(landmarker, frame, box, timestamp_ms)
                if face is None or any(same_face(face.bbox, f.bbox) for f in faces + small):
                    self._release(landmarker, clean=face is None)
                    continue
                self._tracks.append(_SmallTrack(landmarker, face.bbox))
                small.append(face)
                room -= 1
        return faces + small

    def _search_due(self, timestamp_ms: int) -> bool:
        if self._last_search_ts is None:
            return True
        since = timestamp_ms - self._last_search_ts
        return since >= self.detect_interval_ms or (self._lost and since >= LOSS_GAP_MS)

    def _search(self, frame: np.ndarray) -> list[np.ndarray]:
        """Face boxes (x0, y0, x1, y1) of the full-range detector, best first, one per face."""
        import mediapipe as mp

        if self._detector is None:
            from mediapipe.tasks.python import BaseOptions, vision

            opts = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=self.detector_path),
                running_mode=vision.RunningMode.IMAGE,
                min_detection_confidence=self.detector_confidence,
            )
            with mediapipe_tasks.quiet_native_logs():
                self._detector = vision.FaceDetector.create_from_options(opts)
                # its first run logs a notice too ("Input tensor memory is not aligned"): let it happen here
                self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((64, 64, 3), np.uint8)))
        found: list[tuple[float, np.ndarray]] = []
        h, w = frame.shape[:2]
        for x0, y0, x1, y1 in tiles(w, h, self.tile):
            area = np.ascontiguousarray(frame[y0:y1, x0:x1])
            result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=area))
            for d in result.detections:
                b = d.bounding_box
                box = np.array(
                    [b.origin_x + x0, b.origin_y + y0, b.origin_x + x0 + b.width, b.origin_y + y0 + b.height],
                    np.float32,
                )
                found.append((d.categories[0].score if d.categories else 0.0, box))
        found.sort(key=lambda sb: -sb[0])
        boxes: list[np.ndarray] = []
        for _, box in found:
            if not any(same_face(box, b) for b in boxes):
                boxes.append(box)
        return boxes

    def _landmark_crop(self, landmarker: Any, frame: np.ndarray, box: np.ndarray, timestamp_ms: int) -> Face | None:
        """The face of a square crop around ``box``, resized to ``crop_size``, in frame pixels (None: no face)."""
        import mediapipe as mp

        size = self.crop_size
        side = self.crop_scale * max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)
        x0 = (float(box[0]) + float(box[2]) - side) / 2
        y0 = (float(box[1]) + float(box[3]) - side) / 2
        s = size / side
        if s >= 1:
            warp = np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]], np.float32)
            crop = cv2.warpAffine(frame, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        else:  # a large face (the full-frame landmarker missed it): cut at full size, then shrink without aliasing
            n = int(math.ceil(side))
            s = size / n
            warp = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]], np.float32)
            cut = cv2.warpAffine(frame, warp, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            crop = cv2.resize(cut, (size, size), interpolation=cv2.INTER_AREA)
        result = landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop), int(timestamp_ms))
        faces = faces_from_result(result, size, size, 1.0 / s, (x0, y0))
        return faces[0] if faces else None


def make_backend(name: str, max_faces: int = 1, small_faces: bool = True, **kwargs) -> LandmarkBackend:
    """A landmark backend by name (``mediapipe`` or ``fan``).

    Args:
        name: ``mediapipe`` or ``fan``.
        max_faces: most faces per frame.
        small_faces: with ``mediapipe``, also find faces too small for the full-frame landmarker (wide
            shots) with :class:`workers.face_search.FaceSearch`; False gives the plain
            :class:`MediaPipeLandmarker`. Ignored by ``fan``.
        kwargs: passed to the backend's constructor.

    Raises:
        ValueError: unknown backend name.
    """
    if name == "mediapipe":
        if small_faces:
            return FaceSearch(max_faces=max_faces, **kwargs)
        return MediaPipeLandmarker(max_faces=max_faces, **kwargs)
    if name == "fan":
        return FanLandmarker(max_faces=max_faces, **kwargs)
    raise ValueError(f"unknown landmark backend '{name}' (choose 'mediapipe' or 'fan')")
