"""Mouth crops and the per-frame inputs of the lip-sync scorer, from dataset rows or from any video.

One crop rule serves training (dataset crops and their 68 landmarks) and scoring (frames of any mp4, e.g. a
render): a similarity warp that puts the eye line horizontal, scales by the distance between the eye centres and
centres the box a little below the mouth corners, so head roll, distance and an opening jaw do not move the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from workers import media
from workers.audio import frame_features
from workers.audio_decode import read_audio
from workers.errors import ClipError

MOUTH_SIZE = (96, 48)
"""Width, height of a mouth crop (pixels)."""
MOUTH_SPAN = 1.8
"""Crop width in eye-centre distances (a wide smile is about 1.1)."""
MOUTH_DROP = 0.12
"""How far below the mouth corners the crop's centre sits, in eye-centre distances (an open jaw moves down)."""


def mouth_transform(lms: np.ndarray, size: tuple[int, int] = MOUTH_SIZE) -> np.ndarray:
    """The 2x3 affine matrix mapping image pixels to mouth-crop pixels, from 68 landmarks [68, 2]."""
    left, right = lms[36:42].mean(0), lms[42:48].mean(0)
    eye = right - left
    d = max(float(np.hypot(*eye)), 1e-3)
    cos, sin = eye / d
    w, h = size
    s = w / (MOUTH_SPAN * d)
    rot = np.array([[cos, sin], [-sin, cos]]) * s  # rotate by minus the roll, then scale
    centre = (lms[48] + lms[54]) / 2 + MOUTH_DROP * d * np.array([-sin, cos])
    t = np.array([w / 2, h / 2]) - rot @ centre
    return np.concatenate([rot, t[:, None]], 1).astype(np.float32)


def mouth_crop(image: np.ndarray, lms: np.ndarray, size: tuple[int, int] = MOUTH_SIZE) -> np.ndarray:
    """Grayscale uint8 [h, w] mouth crop of an RGB (or gray) uint8 image, from its 68 landmarks."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.warpAffine(gray, mouth_transform(lms, size), size, flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


def fill_missing(crops: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Frames without a face take the nearest frame's crop (kept flagged invalid by the caller)."""
    if found.all() or not found.any():
        return crops
    idx = np.flatnonzero(found)
    nearest = idx[np.abs(np.arange(len(found))[:, None] - idx[None, :]).argmin(1)]
    return crops[nearest]


@dataclass
class SyncInputs:
    """What the lip-sync scorer reads of one video: per frame a mouth crop and the audio window around it."""

    crops: np.ndarray
    """uint8 [T, h, w] grayscale mouth crops."""
    mel: np.ndarray
    """float32 [T, 16, 80] log-mel windows centred on each frame (the dataset's ``audio_features``)."""
    valid: np.ndarray
    """bool [T]: a face was found and the audio covers the frame."""
    fps: float


def video_sync_inputs(video: str | Path, audio: str | Path | None = None, fps: float = media.TARGET_FPS,
                      max_frames: int | None = None) -> SyncInputs:
    """Mouth crops (MediaPipe landmarks, one face) and audio windows of a video, at ``fps``.

    Args:
        video: any clip ffmpeg reads.
        audio: the audio to score against (default: the video's own track).
        fps: frame rate the video is sampled at (the scorer's offsets are in these frames).
        max_frames: read at most this many frames.

    Raises:
        ClipError: the video or audio cannot be read, has no audio, or shows no face at all.
    """
    from workers.landmarks import MediaPipeLandmarker

    info = media.probe(video)
    landmarker = MediaPipeLandmarker(max_faces=1)
    crops, found = [], []
    try:
        for i, frame in enumerate(media.iter_frames(video, info, fps=fps, max_frames=max_frames)):
            faces = landmarker.detect(frame, int(round((i + 1) * 1000 / fps)))
            found.append(bool(faces))
            crops.append(mouth_crop(frame, faces[0].landmarks_68) if faces else
                         np.zeros(MOUTH_SIZE[::-1], np.uint8))
    finally:
        landmarker.close()
    if not any(found):
        raise ClipError(str(video), "no face found in any frame: the lip-sync score needs a visible mouth")
    source = audio if audio is not None else video
    if audio is None and not info.has_audio:
        raise ClipError(str(video), "the video has no audio track: give the audio with --audio")
    feats = frame_features(read_audio(source), len(crops), fps)
    found_arr = np.asarray(found)
    return SyncInputs(fill_missing(np.stack(crops), found_arr), feats.mel, found_arr & feats.valid, fps)
