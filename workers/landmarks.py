"""Face landmarks behind one interface, with two backends, and a tracker that keeps person ids.

Backends:

* :class:`MediaPipeLandmarker` (default): MediaPipe Tasks FaceLandmarker, 478 mesh points mapped to
  the 68-point (Multi-PIE / iBUG) convention, 52 ARKit blendshapes, a head transform.
* :class:`FanLandmarker`: face-alignment's 2D-FAN-4 (68 points) with the BlazeFace detector.

:func:`workers.face_search.make_backend` builds one by name, wrapping the MediaPipe one in
:class:`workers.face_search.FaceSearch`, which also finds faces too small for the full-frame landmarker (wide shots).

Both return, per frame, a list of :class:`Face` in image pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from workers import assets, mediapipe_tasks

# MediaPipe 478-point mesh indices of the 68 points, in iBUG order: jaw 0-16 (image left to right),
# brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67. Derived by
# scripts/derive_mediapipe_68.py: for each of the ICT model's 68 landmark vertices, the mesh point that
# lands nearest to it after fitting the model to real clips (so the 3DMM fit sees consistent points).
# The jaw points are therefore fixed points on the lower face, not the moving 2D silhouette FAN follows.
MEDIAPIPE_TO_68 = np.array(
    [
        139, 227, 137, 213, 138, 169, 149, 171, 175, 396, 378, 394, 367, 433, 366, 447, 368,  # jaw
        70, 63, 105, 66, 107,  # right brow (outer -> inner)
        336, 296, 334, 293, 300,  # left brow (inner -> outer)
        168, 197, 5, 1,  # nose bridge
        98, 167, 164, 393, 327,  # nose base
        33, 161, 158, 155, 153, 144,  # right eye
        382, 385, 388, 263, 390, 380,  # left eye
        76, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,  # outer lips
        78, 81, 13, 311, 308, 402, 14, 178,  # inner lips
    ],
    dtype=np.int64,
)

# The 52 ARKit blendshape names, in MediaPipe's output order (after its "_neutral" entry).
BLENDSHAPE_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
assert len(BLENDSHAPE_NAMES) == 51  # MediaPipe outputs "_neutral" + these 51 = 52 scores


@dataclass
class Face:
    """One detected face in one frame, in image pixels."""

    landmarks_68: np.ndarray
    """float32 [68, 2] (x, y) pixels."""
    bbox: np.ndarray
    """float32 [4] (x0, y0, x1, y1) pixels, tight around the 68 points."""
    score: float = 1.0
    """Detection confidence in [0, 1]."""
    mesh: np.ndarray | None = None
    """float32 [478, 3] MediaPipe mesh (x, y pixels; z in pixel units, relative depth), if available."""
    blendshapes: np.ndarray | None = None
    """float32 [52] MediaPipe scores ("_neutral" first, then :data:`BLENDSHAPE_NAMES`), if available."""
    transform: np.ndarray | None = None
    """float32 [4, 4] MediaPipe facial transformation matrix (canonical face -> camera), if available."""


class LandmarkBackend(Protocol):
    """Detects faces and their landmarks in a stream of frames of one clip."""

    name: str

    def detect(self, frame: np.ndarray, timestamp_ms: int) -> list[Face]:
        """Faces in one RGB frame ``[H, W, 3]`` uint8; timestamps increase within a clip."""
        ...

    def reset(self) -> None:
        """Forget temporal state before the next clip."""
        ...

    def close(self) -> None:
        """Release native resources."""
        ...


def _bbox(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(0), *points.max(0)], np.float32)


def create_face_landmarker(model_path: str, num_faces: int, min_confidence: float) -> Any:
    """A MediaPipe Tasks FaceLandmarker in video mode with blendshapes and head transforms, created quietly."""
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model_path),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=num_faces,
        min_face_detection_confidence=min_confidence,
        min_face_presence_confidence=min_confidence,
        min_tracking_confidence=min_confidence,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    with mediapipe_tasks.quiet_native_logs():
        return vision.FaceLandmarker.create_from_options(opts)


class MediaPipeLandmarker:
    """MediaPipe FaceLandmarker in video mode (uses tracking between frames).

    Args:
        max_faces: most faces per frame.
        model_path: a ``face_landmarker.task`` file; default from the asset registry.
        min_confidence: detection / presence / tracking confidence thresholds.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = 1, model_path: str | Path | None = None, min_confidence: float = 0.5):
        self.max_faces = max_faces
        self.model_path = str(model_path or assets.resolve("face_landmarker"))
        self.min_confidence = min_confidence
        self._landmarker: Any = None
        self._last_ts = -1
        mediapipe_tasks.close_at_exit(self)

    def _create(self):
        return create_face_landmarker(self.model_path, self.max_faces, self.min_confidence)

    def reset(self) -> None:
        """Start a new video stream (MediaPipe needs increasing timestamps per stream)."""
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None
        self._last_ts = -1

    def detect(self, frame: np.ndarray, timestamp_ms: int) -> list[Face]:
        import mediapipe as mp

        if self._landmarker is None or timestamp_ms <= self._last_ts:
            self.close()
            self._landmarker = self._create()
        landmarker = self._landmarker
        self._last_ts = timestamp_ms
        h, w = frame.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        return faces_from_result(landmarker.detect_for_video(image, int(timestamp_ms)), w, h)


def faces_from_result(result: Any, width: int, height: int, scale: float = 1.0,
                      offset: tuple[float, float] = (0.0, 0.0)) -> list[Face]:
    """:class:`Face` objects from a FaceLandmarker result on an image of ``width`` x ``height``.

    ``scale`` and ``offset`` map that image's pixels into a larger frame (``frame = image * scale +
    offset``; z is scaled like x), for results computed on a resized crop of the frame.
    """
    faces = []
    shift = np.array([offset[0], offset[1], 0.0], np.float32)
    for k, lms in enumerate(result.face_landmarks):
        mesh = np.array([(p.x * width, p.y * height, p.z * width) for p in lms], np.float32)
        if scale != 1.0 or offset != (0.0, 0.0):
            mesh = mesh * np.float32(scale) + shift
        lm68 = mesh[MEDIAPIPE_TO_68, :2].copy()
        bs = None
        if result.face_blendshapes:
            bs = np.array([c.score for c in result.face_blendshapes[k]], np.float32)
        tf = None
        if result.facial_transformation_matrixes:
            tf = np.asarray(result.facial_transformation_matrixes[k], np.float32)
        faces.append(Face(lm68, _bbox(mesh[:, :2]), 1.0, mesh, bs, tf))
    return faces


class FanLandmarker:
    """face-alignment's 2D-FAN-4 (68 points) with the BlazeFace detector, both read from local files.

    FAN's weights cannot be downloaded on machines without internet; the asset registry looks for
    ``2DFAN4-11f355bf06.pth.tar`` (checked against the hash prefix in its name). ``fan_weights`` lets a
    user (or a test) give another state dict of the same network.

    Args:
        max_faces: most faces per frame (highest detector scores first).
        device: torch device.
        fan_weights: path of a FAN state dict; default from the asset registry.
        detector_weights, detector_anchors: BlazeFace files; default from the asset registry.
    """

    name = "fan"

    def __init__(
        self,
        max_faces: int = 1,
        device: str = "cpu",
        fan_weights: str | Path | None = None,
        detector_weights: str | Path | None = None,
        detector_anchors: str | Path | None = None,
    ):
        import face_alignment
        import torch

        self.max_faces = max_faces
        weights = Path(fan_weights) if fan_weights else assets.resolve("fan_2d")
        detector_kwargs = {
            "path_to_detector": str(detector_weights or assets.resolve("blazeface")),
            "path_to_anchor": str(detector_anchors or assets.resolve("blazeface_anchors")),
        }

        class _LocalFan(face_alignment.FaceAlignment):
            def _load_native(self, network_name, network_size, device, dtype):  # noqa: ARG002
                net = face_alignment.models.FAN(network_size)
                net.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
                return net.to(device, dtype=dtype).eval()

        self._fa = _LocalFan(
            face_alignment.LandmarksType.TWO_D, device=device, face_detector="blazeface",
            face_detector_kwargs=detector_kwargs, compile=False, flip_input=False,
        )

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def detect(self, frame: np.ndarray, timestamp_ms: int) -> list[Face]:  # noqa: ARG002
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            boxes = self._fa.face_detector.detect_from_image(frame.copy())
            if len(boxes) == 0:
                return []
            boxes = sorted(boxes, key=lambda b: -float(b[4]) if len(b) > 4 else 0.0)[: self.max_faces]
            lms, scores, _ = self._fa.get_landmarks_from_image(
                frame, detected_faces=boxes, return_landmark_score=True
            )
        faces = []
        for pts, sc, box in zip(lms or [], scores or [], boxes, strict=False):
            pts = np.asarray(pts, np.float32)[:, :2]
            faces.append(Face(pts, _bbox(pts), float(box[4]) if len(box) > 4 else float(np.mean(sc))))
        return faces


@dataclass
class _Track:
    tid: int
    centre: np.ndarray
    size: float
    last_frame: int
    hits: int = 0
    frames: list[int] = field(default_factory=list)


class FaceTracker:
    """Keeps one id per person across frames: Hungarian matching on face-centre distance.

    Args:
        max_distance: largest centre jump between frames, in face sizes, still matched to a track.
        max_gap: frames a track may go unseen before a new face can no longer join it.
    """

    def __init__(self, max_distance: float = 0.75, max_gap: int = 50):
        self.max_distance = max_distance
        self.max_gap = max_gap
        self.tracks: list[_Track] = []

    def update(self, frame_index: int, faces: list[Face]) -> list[int]:
        """Assign a track id to each face of a frame (same order as ``faces``)."""
        live = [t for t in self.tracks if frame_index - t.last_frame <= self.max_gap]
        ids = [-1] * len(faces)
        if faces and live:
            cost = np.zeros((len(faces), len(live)))
            for i, f in enumerate(faces):
                c = (f.bbox[:2] + f.bbox[2:]) / 2
                for j, t in enumerate(live):
                    cost[i, j] = np.linalg.norm(c - t.centre) / max(t.size, 1.0)
            rows, cols = linear_sum_assignment(cost)
            for i, j in zip(rows, cols, strict=True):
                if cost[i, j] <= self.max_distance:
                    ids[i] = live[j].tid
        for i, f in enumerate(faces):
            c = (f.bbox[:2] + f.bbox[2:]) / 2
            size = float(max(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]))
            if ids[i] < 0:
                t = _Track(len(self.tracks), c, size, frame_index)
                self.tracks.append(t)
                ids[i] = t.tid
            t = self.tracks[ids[i]]
            t.centre, t.size, t.last_frame = c, size, frame_index
            t.hits += 1
            t.frames.append(frame_index)
        return ids


def select_people(per_frame: list[list[tuple[int, Face]]], n: int, most: int, min_track_fraction: float,
                  min_face_fraction: float) -> tuple[list[int], int]:
    """The track ids of a clip kept as people (at most ``most``, the most visible), ordered left to right, and how
    many more people there were.

    A face seen in under ``min_track_fraction`` of the ``n`` frames (a passer-by), or smaller than
    ``min_face_fraction`` of the largest person's face (a poster, a photo, a screen behind the people), is not a
    person.

    Args:
        per_frame: per frame, the (track id, face) pairs of :class:`FaceTracker`.
    """
    counts: dict[int, int] = {}
    xs: dict[int, list[float]] = {}
    sizes: dict[int, list[float]] = {}
    for faces in per_frame:
        for tid, f in faces:
            counts[tid] = counts.get(tid, 0) + 1
            xs.setdefault(tid, []).append(float(f.bbox[0] + f.bbox[2]) / 2)
            sizes.setdefault(tid, []).append(float(max(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1])))
    keep = [t for t, c in counts.items() if c >= max(1, min_track_fraction * n)]
    if keep:
        largest = max(float(np.median(sizes[t])) for t in keep)
        keep = [t for t in keep if np.median(sizes[t]) >= min_face_fraction * largest]
    ranked = sorted(keep, key=lambda t: -counts[t])
    return sorted(ranked[:most], key=lambda t: float(np.median(xs[t]))), max(len(ranked) - most, 0)
