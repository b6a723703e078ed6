"""The per-clip worker: one clip in, per-frame rows of every person and a clip summary out.

Two streaming passes over the decoded frames keep memory bounded whatever the clip length:

1. landmarks (and blendshapes, head transform) of every frame, faces tracked into people;
   then, per person, one square crop for the clip and the 3DMM / pose / focal fit;
2. per person and frame: the crop (JPEG), person segmentation -> head/neck/torso/background
   parsing (PNG), and samples for the clip's background image.

Audio features (mel windows, ZCR, RMS) are computed once from the clip's audio track.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from workers import audio as audio_mod
from workers import geometry, media, parsing, speakers, voices
from workers.audio_decode import read_audio
from workers.config import BUILDER_VERSION, SINK_ROWS, ClipConfig, clip_config_json, clip_id_for
from workers.errors import ClipError
from workers.face_search import make_backend
from workers.landmarks import Face, FaceTracker, LandmarkBackend, select_people
from workers.morphable import FaceModel, FitResult, fit_clip
from workers.watchdog import Watchdog

MIN_FRAMES = 5
"""Fewest frames a clip must decode to (at the build's frame rate) to be built: 0.2 s at 25 fps, the smoothing
window of the speaking flag and the shortest span a 3DMM fit with a smoothness term is meaningful over."""


@dataclass
class PersonSummary:
    """What one person of a clip contributes to their identity."""

    identity: str
    person: int
    n_frames: int
    """Frames in which this person's face was found."""
    crop_box: list[int]
    """Crop in source pixels (x0, y0, x1, y1)."""
    focal: float
    """Focal length in crop pixels."""
    cx: float
    cy: float
    near: float
    far: float
    identity_coeffs: list[float]
    reprojection_error_px: float
    """Median over frames of the mean landmark reprojection error (crop pixels)."""
    background_png: bytes = b""
    """RGB background image of the crop (PNG)."""


@dataclass
class ClipResult:
    """Everything extracted from one clip."""

    summary: dict[str, Any]
    """One row of the ``clips/`` table (without ``status`` bookkeeping done by the pipeline)."""
    rows: list[dict[str, Any]]
    """Rows of the ``frames/`` table: one per frame and person (empty when they went to a ``sink``)."""
    people: list[PersonSummary]


@dataclass
class _Detections:
    frames: int = 0
    per_frame: list[list[tuple[int, Face]]] = field(default_factory=list)


class ClipProcessor:
    """Turns one clip into per-frame rows. Loads its models once; call it once per clip.

    Args:
        config: extraction settings.
        landmarker: a ready landmark backend (default: built from ``config.backend``).
    """

    def __init__(self, config: ClipConfig | None = None, landmarker: LandmarkBackend | None = None):
        self.config = config or ClipConfig()
        self._own_landmarker = landmarker is None
        self.landmarker = landmarker or self._make_landmarker(self.config.max_people)
        self.segmenter = parsing.PersonSegmenter()
        self.face_model = FaceModel(n_identity=self.config.fit.n_identity)
        self.voice = voices.VoiceActivity()

    def _make_landmarker(self, people: int) -> LandmarkBackend:
        # One face more than the people kept, so a clip with more people than kept says so.
        self._max_faces = people + 1
        return make_backend(self.config.backend, max_faces=self._max_faces, small_faces=self.config.small_faces)

    def close(self) -> None:
        """Release native resources of the models."""
        self.landmarker.close()
        self.segmenter.close()

    def __call__(
        self, path: str | Path, identity: str | None = None, clip_id: str | None = None,
        source_uri: str | None = None, watchdog: Watchdog | None = None,
        sink: Callable[[list[dict[str, Any]]], None] | None = None,
        role_overrides: list[speakers.RoleOverride] | None = None,
    ) -> ClipResult:
        """Extract one clip.

        Args:
            path: local path of the clip.
            identity: identity name (default: the file stem); with several people, ``<identity>_p<k>``. Names
                joined by ``|`` (``anchor|guest``) name the clip's people left to right: that many people are kept,
                and finding fewer is an error.
            clip_id: stable id (default: :func:`clip_id_for` of ``source_uri``).
            source_uri: where the clip came from (default: ``path``).
            watchdog: limits on this clip's work (a deadline from its length, a stall limit per frame); None:
                none.
            sink: called with each batch of up to :data:`SINK_ROWS` frame rows as they are made, in order,
                instead of collecting them in :attr:`ClipResult.rows` (memory then stays flat in the clip's
                length; the dataset build streams them to Parquet).

        Returns:
            The :class:`ClipResult`.

        Raises:
            ClipError: the clip cannot be read, has no video, is too short, has no face in any frame, has fewer
                people than its identity names, or a role override names nobody of the clip.
            ClipTimeout: the watchdog fired.
        """
        cfg = self.config
        path = str(path)
        source_uri = source_uri or path
        clip_id = clip_id or clip_id_for(source_uri)
        identity = identity or Path(path).stem
        named = identity.split("|") if "|" in identity else None
        most = len(named) if named else cfg.max_people
        if self._own_landmarker and most + 1 > self._max_faces:
            self.landmarker.close()
            self.landmarker = self._make_landmarker(most)
        timings: dict[str, float] = {}

        t = time.perf_counter()
        info = media.probe(path)
        timings["probe_s"] = time.perf_counter() - t
        expected = int(info.video_duration_s * cfg.fps)
        _check_length(path, round(info.video_duration_s * cfg.fps), info, cfg.fps)  # fps may decode none at all
        if cfg.max_frames is not None:
            expected = min(expected, cfg.max_frames)
        if watchdog is not None:
            watchdog.expect(expected)
            watchdog.beat("audio decode")

        t = time.perf_counter()
        samples = np.zeros(0, np.float32)
        warnings: list[str] = []
        if info.has_audio:
            try:
                samples = read_audio(path, cfg.audio.sample_rate)
            except ClipError as exc:
                warnings.append(f"audio track unreadable ({exc.reason}); audio features are empty")
        else:
            warnings.append("no audio stream; audio features are empty")
        timings["audio_decode_s"] = time.perf_counter() - t

        t = time.perf_counter()
        content = media.content_box(path, info, cfg.fps, watchdog=watchdog) if cfg.remove_borders else None
        area = content or (0, 0, info.width, info.height)
        det = self._detect(path, info, content, watchdog)
        timings["landmarks_s"] = time.perf_counter() - t
        n = det.frames
        _check_length(path, n, info, cfg.fps)

        t = time.perf_counter()
        fa = audio_mod.frame_features(samples, n, cfg.fps, cfg.audio)
        speaking = audio_mod.speaking_mask(fa.rms, fa.valid, cfg.fps)
        timings["audio_features_s"] = time.perf_counter() - t

        if cfg.max_frames is None and n < 0.9 * expected - 1:
            warnings.append(f"decoded only {n} of ~{expected} frames (truncated or damaged file?)")

        people, extra = select_people(det.per_frame, n, most, cfg.min_track_fraction, cfg.min_face_fraction)
        if not people:
            raise ClipError(path, f"no face detected in any of the {n} frames")
        if named and len(people) < len(named):
            raise ClipError(path, f"the identity names {len(named)} people ({identity}) but {len(people)} "
                                  f"{'was' if len(people) == 1 else 'were'} found")
        if extra:
            warnings.append(f"{len(people) + extra} people found; kept the {len(people)} most visible (raise "
                            "--max-people or name the people in the manifest to keep more)")
        names = named or ([f"{identity}_p{k}" for k in range(len(people))] if len(people) > 1 else [identity])

        t = time.perf_counter()
        track = None
        if len(people) > 1:
            if watchdog is not None:
                watchdog.beat("active-speaker detection")
            track = self._speakers(det, people, n, samples, fa, names, role_overrides or [], path)
            if not info.has_audio or not samples.size:
                warnings.append("no audio: nobody speaks, every person's role is silent")
        timings["speakers_s"] = time.perf_counter() - t

        t = time.perf_counter()
        fits: list[tuple[np.ndarray, np.ndarray, FitResult, np.ndarray]] = []
        for k, tid in enumerate(people):
            if watchdog is not None:
                watchdog.beat(f"3DMM fit of person {k}")
            frames = np.array([i for i in range(n) if any(k == tid for k, _ in det.per_frame[i])])
            faces = [next(f for k, f in det.per_frame[i] if k == tid) for i in frames]
            boxes = np.stack([f.bbox for f in faces])
            crop = geometry.person_crop_box(boxes, area[2] - area[0], area[3] - area[1], cfg.crop_scale)
            lms = np.stack([f.landmarks_68 for f in faces])
            exp0 = rot0 = None
            if all(f.blendshapes is not None for f in faces):
                exp0 = self.face_model.expression_from_blendshapes(np.stack([f.blendshapes for f in faces]))
            if all(f.transform is not None for f in faces):
                rot0 = np.stack([f.transform[:3, :3] for f in faces])
            fit = fit_clip(self.face_model, lms, area[2] - area[0], area[3] - area[1], exp0, rot0, cfg.fit)
            fits.append((frames, crop, fit, boxes))
        timings["fit_s"] = time.perf_counter() - t

        t = time.perf_counter()
        rows: list[dict[str, Any]] = []
        summaries = self._render_rows(
            path, info, content, det, people, fits, fa, speaking, track, names, clip_id, n, sink or rows.extend,
            watchdog,
        )
        timings["parse_encode_s"] = time.perf_counter() - t

        summary = {
            "clip_id": clip_id,
            "source_uri": source_uri,
            "duration_s": info.duration_s,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "has_audio": info.has_audio,
            "sample_rate": info.sample_rate,
            "audio_duration_s": len(samples) / cfg.audio.sample_rate if info.has_audio else None,
            "n_frames": n,
            "n_people": len(people),
            "content_box": list(content) if content else None,
            "builder_version": BUILDER_VERSION,
            "backend": self.landmarker.name,
            "warning": "; ".join(warnings) or None,
            "config_json": clip_config_json(cfg),
            **timings,
            "total_s": sum(timings.values()),
        }
        return ClipResult(summary, rows, summaries)

    # pass 1 -----------------------------------------------------------------------------------
    def _detect(self, path: str, info: media.ClipInfo, content, watchdog: Watchdog | None = None) -> _Detections:
        self.landmarker.reset()
        tracker = FaceTracker()
        det = _Detections()
        step_ms = 1000.0 / self.config.fps
        frames = media.iter_frames(path, info, self.config.fps, self.config.max_frames, content, watchdog)
        for i, frame in enumerate(frames):
            faces = self.landmarker.detect(frame, int(round(i * step_ms)))
            ids = tracker.update(i, faces)
            det.per_frame.append(list(zip(ids, faces, strict=True)))
            det.frames += 1
        self.landmarker.reset()
        return det

    def _speakers(self, det: _Detections, people: list[int], n: int, samples: np.ndarray,
                  fa: audio_mod.FrameAudio, names: list[str], overrides: list[speakers.RoleOverride],
                  path: str) -> speakers.SpeakerTrack:
        """Who speaks when (:func:`workers.speakers.detect_speakers`), with the hand-checked overrides applied."""
        cfg = self.config
        lms = np.full((len(people), n, 68, 2), np.nan, np.float32)
        for i, faces in enumerate(det.per_frame):
            for tid, f in faces:
                if tid in people:
                    lms[people.index(tid), i] = f.landmarks_68
        voice = self.voice(samples, n, cfg.fps, cfg.audio.sample_rate) * fa.valid
        track = speakers.detect_speakers(lms, fa.mel, voice, cfg.fps, cfg.speakers)
        try:
            return speakers.apply_overrides(track, overrides, names, cfg.fps)
        except ValueError as exc:
            raise ClipError(path, str(exc)) from exc

    # pass 2 -----------------------------------------------------------------------------------
    def _render_rows(self, path, info, content, det, people, fits, fa, speaking, track, names, clip_id, n, emit,
                     watchdog=None):
        cfg = self.config
        size = cfg.crop_size
        roles = [track.roles(k) for k in range(len(people))] if track is not None else None
        by_frame = []
        for frames, _, _, _ in fits:
            by_frame.append({int(f): j for j, f in enumerate(frames)})
        bg = [parsing.BackgroundAccumulator((size, size), cfg.background_samples) for _ in people]
        bg_stride = max(n // cfg.background_samples, 1)
        rows: list[dict[str, Any]] = []
        encode = [int(cv2.IMWRITE_JPEG_QUALITY), cfg.jpeg_quality]
        ox, oy = (content[0], content[1]) if content else (0, 0)
        source_boxes = [[int(c[0]) + ox, int(c[1]) + oy, int(c[2]) + ox, int(c[3]) + oy] for _, c, _, _ in fits]
        for i, frame in enumerate(media.iter_frames(path, info, cfg.fps, n, content, watchdog)):
            if len(rows) >= SINK_ROWS:
                emit(rows)
                rows = []
            for k, tid in enumerate(people):
                frames, crop, fit, boxes = fits[k]
                x0, y0, x1, y1 = (int(v) for v in crop)
                s = size / float(x1 - x0)
                img = cv2.resize(frame[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA if s < 1 else
                                 cv2.INTER_LINEAR)
                ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), encode)
                row: dict[str, Any] = {
                    "identity": names[k],
                    "clip_id": clip_id,
                    "person": k,
                    "frame_index": i,
                    "time_s": i / cfg.fps,
                    "role": "solo" if track is None else roles[k][i],
                    "speaking": (bool(track.speaker[i] == k) if track is not None else
                                 bool(speaking[i]) if fa.valid[i] else None),
                    "speaking_confidence": float(track.confidence[i]) if track is not None else None,
                    "image_jpeg": jpg.tobytes(),
                    "image_size": size,
                    "crop_box": source_boxes[k],
                    "audio_features": fa.mel[i].reshape(-1),
                    "audio_valid": bool(fa.valid[i]),
                    "zcr": float(fa.zcr[i]),
                    "rms": float(fa.rms[i]),
                }
                j = by_frame[k].get(i)
                if j is None:
                    row.update(_empty_face("no face detected"))
                    rows.append(row)
                    continue
                face = next(f for t, f in det.per_frame[i] if t == tid)
                lms = (face.landmarks_68 - [x0, y0]) * s
                person = self.segmenter(img)
                labels = parsing.parse(person, lms)
                if i % bg_stride == 0:
                    bg[k].add(img, labels)
                row.update(
                    {
                        "face_found": True,
                        "error": None,
                        "bbox": ((face.bbox - [x0, y0, x0, y0]) * s).astype(np.float32),
                        "landmarks_2d": lms.astype(np.float32).reshape(-1),
                        "landmarks_mesh": (((face.mesh - [x0, y0, 0]) * s).astype(np.float32).reshape(-1)
                                           if cfg.store_mesh and face.mesh is not None else None),
                        "pose_c2w": fit.pose_c2w[j].reshape(-1),
                        "focal": fit.focal * s,
                        "cx": (fit.cx - x0) * s,
                        "cy": (fit.cy - y0) * s,
                        "expression": fit.expression[j],
                        "blendshapes": face.blendshapes,
                        "eye_ratio": float(geometry.eye_ratio(lms)),
                        "mouth_opening": float(geometry.mouth_opening(lms)),
                        "lips_rect": geometry.lips_rect(lms, size, size),
                        "face_rect": geometry.face_rect(lms, size, size),
                        "parsing_png": parsing.encode_png(labels),
                        "reprojection_error": float(fit.reprojection_error[j] * s),
                    }
                )
                rows.append(row)
        if rows:
            emit(rows)
        summaries = []
        for k, (frames, crop, fit, _) in enumerate(fits):
            s = size / float(crop[2] - crop[0])
            bg_img = bg[k].result()
            ok, png = cv2.imencode(".png", cv2.cvtColor(bg_img, cv2.COLOR_RGB2BGR))
            summaries.append(
                PersonSummary(
                    identity=names[k], person=k, n_frames=len(frames),
                    crop_box=source_boxes[k],
                    focal=fit.focal * s, cx=(fit.cx - crop[0]) * s, cy=(fit.cy - crop[1]) * s,
                    near=fit.near, far=fit.far, identity_coeffs=[float(v) for v in fit.identity],
                    reprojection_error_px=float(np.median(fit.reprojection_error) * s),
                    background_png=png.tobytes(),
                )
            )
        return summaries


def _check_length(path: str, frames: int, info: media.ClipInfo, fps: float) -> None:
    """Raise when a clip has fewer than :data:`MIN_FRAMES` frames at ``fps``."""
    if frames < MIN_FRAMES:
        raise ClipError(path, f"too short: {frames} frame(s) at {fps:g} fps ({info.video_duration_s:.2f} s of video); "
                              f"a clip needs at least {MIN_FRAMES}")


def _empty_face(reason: str) -> dict[str, Any]:
    keys = ("bbox", "landmarks_2d", "landmarks_mesh", "pose_c2w", "focal", "cx", "cy", "expression",
            "blendshapes", "eye_ratio", "mouth_opening", "lips_rect", "face_rect", "parsing_png",
            "reprojection_error")
    return {"face_found": False, "error": reason, **{k: None for k in keys}}
