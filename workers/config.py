"""Settings and identifiers of the per-clip extraction: light to import (no torch, no models).

The driver of a dataset build needs these to decide what to build; only the workers import the
heavy modules (:mod:`workers.clip`, :mod:`workers.morphable`, ...), which re-export these names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from workers.media import TARGET_FPS
from workers.speakers import SpeakerConfig


@dataclass(frozen=True)
class AudioFeatureConfig:
    """How audio is turned into per-frame features."""

    sample_rate: int = 16000
    """Rate the audio is resampled to (Hz)."""
    n_mels: int = 80
    """Mel bands."""
    hop_s: float = 0.02
    """Mel frame hop (s): 50 mel frames per second, two per video frame at 25 fps."""
    win_s: float = 0.04
    """Mel analysis window (s)."""
    fmin: float = 55.0
    """Lowest mel frequency (Hz)."""
    fmax: float = 7600.0
    """Highest mel frequency (Hz)."""
    window: int = 16
    """Mel frames per video frame, centred on it (RAD-NeRF / ER-NeRF use [N, 16, C])."""
    min_db: float = -100.0
    """Floor of the log-mel in dB; features are scaled to [0, 1] over [min_db, 0]."""


@dataclass(frozen=True)
class FitConfig:
    """Settings of the 3DMM / pose fit."""

    focal_grid: tuple[float, ...] = (0.8, 1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0)
    """Coarse focal candidates, as multiples of max(width, height)."""
    fine_steps: int = 2
    """Fine focal candidates around the best coarse one."""
    search_frames: int = 24
    """Frames used for the focal search."""
    search_iters: int = 60
    """Optimiser steps per focal candidate (all candidates are fitted at once, batched)."""
    rigid_iters: int = 40
    """Pose-only steps of the full fit."""
    joint_iters: int = 1000
    """Most joint identity/expression/pose steps of the full fit; it ends when the loss stops falling (on a
    200-frame clip after about 200-250 steps)."""
    w_identity: float = 2e-4
    """L2 weight on identity coefficients."""
    w_expression: float = 2e-4
    """L2 weight pulling expressions to their blendshape initialisation."""
    w_smooth: float = 1e-3
    """Weight of frame-to-frame smoothness on rotation and translation."""
    n_identity: int = 50
    """Identity modes fitted."""


SINK_ROWS = 64
"""Frame rows per batch a clip worker hands to its sink: one Parquet row group (~5 MB at 512 px crops)."""

BUILDER_VERSION = "0.3.0"
"""Version of the per-frame features; a dataset row built by another version is rebuilt."""


def clip_id_for(source_uri: str) -> str:
    """A stable id of a clip: the first 16 hex digits of the sha1 of its source URI."""
    return hashlib.sha1(str(source_uri).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClipConfig:
    """Settings of the per-clip extraction."""

    backend: str = "mediapipe"
    """Landmark backend: ``mediapipe`` (default) or ``fan``."""
    max_people: int = 2
    """Most people kept per clip: two, so a two-person conversation needs no flag (a solo clip still finds one).
    A manifest that names a clip's people (``anchor|guest``) keeps that many."""
    fps: float = TARGET_FPS
    """Frame rate the clip is resampled to."""
    crop_size: int = 512
    """Side (px) of the square person crop stored per frame."""
    crop_scale: float = 3.0
    """Crop side in face sizes (capped by the frame)."""
    jpeg_quality: int = 95
    """JPEG quality of the stored crops."""
    small_faces: bool = True
    """Also find faces too small for the full-frame landmarker (wide shots, faces down to ~48 px in 1280x720):
    a full-range face detector every 0.5 s while there is room for more people, landmarks on upscaled crops
    (:class:`workers.face_search.FaceSearch`). MediaPipe backend only."""
    min_track_fraction: float = 0.2
    """A tracked face must be seen in this fraction of frames to count as a person (not a passer-by)."""
    min_face_fraction: float = 0.4
    """A person's face must be at least this fraction of the largest person's face (median sizes), or it is
    taken for a poster, a photo or a screen behind the people."""
    store_mesh: bool = True
    """Store MediaPipe's 478-point mesh per frame (``landmarks_mesh``)."""
    background_samples: int = 24
    """Frames sampled for the background image."""
    max_frames: int | None = None
    """Process at most this many frames (None: the whole clip)."""
    remove_borders: bool = True
    """Detect black borders (letter/pillar-boxing, video-call layouts) and work inside them."""
    fit: FitConfig = field(default_factory=FitConfig)
    """3DMM / pose fit settings."""
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    """Audio feature settings."""
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)
    """Active-speaker detection of clips with several people."""


def clip_config_json(cfg: ClipConfig) -> str:
    """The settings as canonical JSON (stored per clip; a change of settings rebuilds the clip)."""
    return json.dumps(asdict(cfg), sort_keys=True)
