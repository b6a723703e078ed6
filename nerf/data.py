"""One identity's frames as training arrays (the ray batches drawn from them are :mod:`nerf.rays`').

The trainer never touches storage: the caller reads the identity's ``frames/`` rows and its
``identities/`` row (with :class:`pipelines.dataset.Dataset`) and hands the two to
:meth:`IdentityFrames.from_rows`. Columns are those of :mod:`pipelines.schema`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW, HOLDOUT_FRACTION, train_count

NEAREST_LATENTS = 1
"""Training frames whose latents a held-out frame averages (:meth:`IdentityFrames.nearest_train`; 1: it takes the
nearest one's). Appearance drifts slowly (light, hair, skin shine), so the frames just before a held-out stretch
describe it better than the mean over the clip, and the last one at least as well as the mean of the last few, as
the last value of a drifting series predicts its next ones better than a window's mean (measurements:
docs/decisions.md, 'RAD-NeRF defaults', NEAREST_LATENTS)."""

LATENT_PAIR_GAP = 2
"""Training frames at most this many frames apart in their clip are neighbours for the latents' smoothness loss
(:attr:`nerf.radnerf.config.LossWeights.latent_smooth`)."""

DECODE_CHUNK = 128
"""Rows turned into Python objects at a time while an identity is decoded."""

COLUMNS = ["clip_id", "frame_index", "face_found", "image_jpeg", "image_size", "pose_c2w", "focal", "cx", "cy",
           "eye_ratio", "lips_rect", "face_rect", "landmarks_2d", "parsing_png", "audio_features", "audio_valid"]
"""The ``frames/`` columns training reads."""


class DataError(ValueError):
    """An identity's rows cannot be trained on (no usable frame, no background, a corrupt image)."""


@dataclass
class IdentityFrames:
    """The usable frames of one identity at one training size, in (clip, frame) order; the last are held out."""

    identity: str
    size: int
    """Images are ``size`` x ``size`` (the person crop scaled)."""
    images: np.ndarray
    """uint8 [N, S, S, 3] RGB."""
    labels: np.ndarray
    """uint8 [N, S, S] parsing labels (BACKGROUND, HEAD, NECK, TORSO)."""
    poses: np.ndarray
    """float32 [N, 4, 4] camera-to-world (OpenGL axes, metres; the head is fixed at the origin)."""
    intrinsics: np.ndarray
    """float32 [N, 3] focal, cx, cy in pixels of the training size."""
    audio: np.ndarray
    """float32 [N, window, n_mels] audio features (zeros where the clip had no audio)."""
    eye: np.ndarray
    """float32 [N] eye openness, the eye aspect ratio divided by the identity's open-eye value (~1 open, ~0 shut)."""
    lips_rect: np.ndarray
    """int32 [N, 4] x0, y0, x1, y1 at the training size."""
    face_rect: np.ndarray
    """int32 [N, 4] x0, y0, x1, y1 at the training size."""
    landmarks: np.ndarray
    """float32 [N, 68, 2] at the training size."""
    background: np.ndarray
    """uint8 [S, S, 3] RGB background of the identity."""
    near: float
    far: float
    clip_ids: list[str]
    frame_index: np.ndarray
    """int32 [N]."""
    n_train: int
    """Frames [0, n_train) train; [n_train, N) are held out."""
    open_eye: float
    """Eye aspect ratio that maps to 1.0 in :attr:`eye`."""
    identity_coeffs: np.ndarray | None = None
    """float32 [K] the identity's 3DMM shape coefficients (``identities/``), or None when the row has none: the
    render checks an expression source against them."""
    version: str = ""
    """Which build of the dataset the frames came from (a fingerprint of the identity's clips, set by the reader;
    empty when unknown): a checkpoint records it, and resuming on other frames is refused."""
    people: tuple[str, ...] = ()
    """The identities of the frames of several people (:func:`merge_people`); empty for one identity's frames."""
    person: np.ndarray | None = None
    """int64 [N] each frame's index into :attr:`people` (None: one identity, every frame its own)."""
    backgrounds: np.ndarray | None = None
    """uint8 [P, S, S, 3] each person's background (None: :attr:`background` for every frame)."""
    depth_bounds: np.ndarray | None = None
    """float32 [P, 2] each person's near and far (None: :attr:`near`, :attr:`far` for every frame)."""

    @property
    def n_people(self) -> int:
        return max(len(self.people), 1)

    def person_of(self) -> np.ndarray:
        """int64 [N] each frame's person (zeros for one identity's frames)."""
        return np.zeros(self.n_frames, np.int64) if self.person is None else self.person

    def all_backgrounds(self) -> np.ndarray:
        """uint8 [P, S, S, 3] the background of each person (one for one identity's frames)."""
        return self.background[None] if self.backgrounds is None else self.backgrounds

    @property
    def n_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def train_ids(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val_ids(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_frames)

    def train_pairs(self, max_gap: int = LATENT_PAIR_GAP) -> np.ndarray:
        """int64 [P, 2]: consecutive training frames of the same clip at most ``max_gap`` frames apart (frames
        without a face are dropped, so neighbours in the table may be further apart in the clip)."""
        clips = np.asarray(self.clip_ids[: self.n_train])
        gap = np.diff(self.frame_index[: self.n_train].astype(np.int64))
        first = np.nonzero((clips[1:] == clips[:-1]) & (gap > 0) & (gap <= max_gap))[0]
        return np.stack([first, first + 1], -1).astype(np.int64)

    def view_gap(self, frame: int) -> float:
        """Degrees between ``frame``'s head rotation and the nearest training frame's (0 for a training frame).

        A held-out frame a few degrees beyond every training view asks the model to extrapolate to a new view,
        not to interpolate between seen ones; its error says little about how well the training frames were
        learnt (most of RD_Radio2_000's held-out frames are such; measurements: docs/decisions.md, 'RAD-NeRF
        defaults', held-out frames as new views)."""
        train = self.poses[: self.n_train, :3, :3].astype(np.float64)
        if train.shape[0] == 0:
            return float("nan")
        cos = (np.einsum("nij,ij->n", train, self.poses[frame, :3, :3].astype(np.float64)) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos.max(), -1.0, 1.0))))

    def nearest_train(self, frame: int, k: int = NEAREST_LATENTS) -> np.ndarray:
        """The ``k`` training frames of ``frame``'s clip closest to it in time (int64, nearest first; empty when its
        clip has no training frame): whose appearance latents a held-out frame borrows."""
        clip = self.clip_ids[frame]
        same = np.array([i for i in range(self.n_train) if self.clip_ids[i] == clip], np.int64)
        if same.size == 0:
            return same
        dist = np.abs(self.frame_index[same].astype(np.int64) - int(self.frame_index[frame]))
        return same[np.argsort(dist, kind="stable")[:k]]

    @classmethod
    def from_rows(cls, frames: pa.Table, identity: dict[str, Any], size: int,
                  holdout: float = HOLDOUT_FRACTION, max_frames: int | None = None) -> IdentityFrames:
        """Decode an identity's rows at a training size (see :meth:`from_batches`).

        Args:
            frames: the identity's ``frames/`` rows (at least :data:`COLUMNS`) in (clip_id, frame_index) order.
            identity, size, holdout, max_frames: see :meth:`from_batches`.

        Raises:
            DataError: no usable frame, no background, or an image that does not decode.
        """

        def batches(columns: list[str]):  # noqa: ANN202
            return frames.select([c for c in columns if c in frames.column_names]).to_batches(DECODE_CHUNK)

        return cls.from_batches(batches, identity, size, holdout, max_frames)

    @classmethod
    def from_batches(cls, batches: Callable[[list[str]], Iterable[pa.RecordBatch]], identity: dict[str, Any],
                     size: int, holdout: float = HOLDOUT_FRACTION, max_frames: int | None = None) -> IdentityFrames:
        """Decode an identity's rows at a training size, streaming: the rows are read twice, once with two small
        columns to find the usable frames and once to decode them a batch at a time, so memory holds the decoded
        arrays and one batch (a whole identity's table would cost several times its images).

        Args:
            batches: ``columns -> record batches`` of the identity's ``frames/`` rows (at least :data:`COLUMNS`)
                in (clip_id, frame_index) order, the same rows on every call
                (:meth:`pipelines.dataset.Dataset.iter_frames`).
            identity: the identity's ``identities/`` row (``background_png``, ``near``, ``far``).
            size: training image side in pixels.
            holdout: fraction of frames (the last ones) held out.
            max_frames: use only the first ``max_frames`` usable frames (before the split).

        Raises:
            DataError: no usable frame, no background, or an image that does not decode.
        """
        name = str(identity.get("identity"))
        masks = [np.asarray(pc.and_(pc.fill_null(b.column("face_found"), False), pc.is_valid(b.column("pose_c2w")))
                            .to_numpy(zero_copy_only=False), bool) for b in batches(["face_found", "pose_c2w"])]
        usable = np.concatenate(masks) if masks else np.zeros(0, bool)
        if usable.size == 0:
            raise DataError(f"identity {name!r} has no frame rows; build the dataset first")
        ok = np.flatnonzero(usable)
        if ok.size == 0:
            raise DataError(f"identity {name!r}: {usable.size} frame rows but none with a face and a pose")
        if max_frames is not None:
            ok = ok[:max_frames]
        n = int(ok.size)

        bg_png = identity.get("background_png") or b""
        bg = cv2.imdecode(np.frombuffer(bg_png, np.uint8), cv2.IMREAD_COLOR) if bg_png else None
        if bg is None:
            raise DataError(f"identity {name!r} has no background image in identities/; rebuild the identities table")
        background = cv2.cvtColor(cv2.resize(bg, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)

        images = np.empty((n, size, size, 3), np.uint8)
        labels = np.empty((n, size, size), np.uint8)
        intr = np.empty((n, 3), np.float32)
        lips = np.empty((n, 4), np.int32)
        face = np.empty((n, 4), np.int32)
        lms = np.full((n, 68, 2), np.nan, np.float32)
        audio = np.zeros((n, AUDIO_WINDOW, AUDIO_MELS), np.float32)
        eye_raw = np.full(n, np.nan, np.float32)
        poses = np.empty((n, 4, 4), np.float32)
        clip_ids: list[str] = []
        frame_index = np.empty(n, np.int32)
        # Decoded DECODE_CHUNK rows at a time: Python objects of a whole identity's rows (JPEG bytes, mel windows
        # as float lists) would cost several times the decoded arrays.
        for k, r in _usable_rows(batches(COLUMNS), ok):
            clip_ids.append(str(r["clip_id"]))
            frame_index[k] = r["frame_index"]
            poses[k] = np.asarray(r["pose_c2w"], np.float32).reshape(4, 4)
            where = f"identity {name!r} clip {r['clip_id']} frame {r['frame_index']}"
            img = cv2.imdecode(np.frombuffer(r["image_jpeg"] or b"", np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"{where}: image_jpeg does not decode")
            src = int(r["image_size"] or img.shape[0])
            s = size / src
            images[k] = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            lab = cv2.imdecode(np.frombuffer(r["parsing_png"] or b"", np.uint8), cv2.IMREAD_UNCHANGED)
            if lab is None:
                raise DataError(f"{where}: parsing_png does not decode")
            labels[k] = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
            intr[k] = (r["focal"] * s, r["cx"] * s, r["cy"] * s)
            lips[k] = _scale_rect(r["lips_rect"], s, size)
            face[k] = _scale_rect(r["face_rect"], s, size)
            if r["landmarks_2d"] is not None:
                lms[k] = np.asarray(r["landmarks_2d"], np.float32).reshape(68, 2) * s
            if r["audio_features"] is not None:
                a = np.asarray(r["audio_features"], np.float32)
                audio[k] = a.reshape(audio.shape[1:]) if a.size == audio[k].size else 0.0
            if r["eye_ratio"] is not None:
                eye_raw[k] = r["eye_ratio"]
        eye, open_eye = normalise_eye(eye_raw)
        return cls(
            identity=name, size=size, images=images, labels=labels, poses=poses, intrinsics=intr, audio=audio,
            eye=eye, lips_rect=lips, face_rect=face, landmarks=lms, background=background,
            near=float(identity.get("near") or 0.3), far=float(identity.get("far") or 1.0),
            clip_ids=clip_ids, frame_index=frame_index,
            n_train=train_count(n, holdout), open_eye=open_eye,
            identity_coeffs=None if identity.get("identity_coeffs") is None
            else np.asarray(identity["identity_coeffs"], np.float32),
        )


PERSON_SEP = "/"
"""Joins a person's identity to its clip ids in frames of several people (``<identity>/<clip_id>``): a clip shared
by two people (a conversation) is two sequences, so per-clip helpers (:meth:`IdentityFrames.nearest_train`,
:meth:`IdentityFrames.train_pairs`) never mix them."""


def merge_people(parts: list[IdentityFrames], name: str) -> tuple[IdentityFrames, np.ndarray]:
    """Several identities' frames (same size) as one set: the training frames of each in turn, then the held-out
    frames of each in turn, so that frames [0, n_train) train as for one identity.

    Args:
        parts: each person's frames (their own split).
        name: the set's name (a conversation id, or the people joined).

    Returns:
        The merged frames (:attr:`IdentityFrames.people`, :attr:`IdentityFrames.person`,
        :attr:`IdentityFrames.backgrounds` and :attr:`IdentityFrames.depth_bounds` set; :attr:`IdentityFrames.near`
        and :attr:`IdentityFrames.far` the union of the people's) and ``order`` (int64 [N, 2]:
        each merged frame's person and row in that person's frames), for aligning per-frame inputs read per person.

    Raises:
        DataError: no parts, parts of different sizes, or one identity twice.
    """
    if not parts:
        raise DataError(f"{name}: no identities to merge")
    names = [p.identity for p in parts]
    if len(set(names)) != len(names):
        raise DataError(f"{name}: an identity is named twice ({', '.join(names)})")
    if len({p.size for p in parts}) != 1:
        raise DataError(f"{name}: frames of different sizes ({', '.join(f'{p.identity} {p.size}px' for p in parts)})")
    train = [np.stack([np.full(p.n_train, k), np.arange(p.n_train)], -1) for k, p in enumerate(parts)]
    held = [np.stack([np.full(p.n_frames - p.n_train, k), np.arange(p.n_train, p.n_frames)], -1)
            for k, p in enumerate(parts)]
    order = np.concatenate(train + held).astype(np.int64)

    runs = [(k, part.train_ids) for k, part in enumerate(parts)] + [(k, part.val_ids) for k, part in enumerate(parts)]

    def cat(attr: str) -> np.ndarray:  # one fancy-indexed copy per person and split, in ``order``'s order
        return np.concatenate([getattr(parts[k], attr)[rows] for k, rows in runs])

    clip_ids = [f"{parts[k].identity}{PERSON_SEP}{parts[k].clip_ids[i]}" for k, i in order]
    coeffs = parts[0].identity_coeffs if len(parts) == 1 else None
    merged = IdentityFrames(
        identity=name, size=parts[0].size, images=cat("images"), labels=cat("labels"), poses=cat("poses"),
        intrinsics=cat("intrinsics"), audio=cat("audio"), eye=cat("eye"), lips_rect=cat("lips_rect"),
        face_rect=cat("face_rect"), landmarks=cat("landmarks"), background=parts[0].background,
        near=min(p.near for p in parts), far=max(p.far for p in parts), clip_ids=clip_ids,
        frame_index=cat("frame_index"), n_train=sum(p.n_train for p in parts),
        open_eye=float(np.mean([p.open_eye for p in parts])), identity_coeffs=coeffs,
        version="+".join(p.version for p in parts) if all(p.version for p in parts) else "",
        people=tuple(names), person=order[:, 0].copy(), backgrounds=np.stack([p.background for p in parts]),
        depth_bounds=np.array([[p.near, p.far] for p in parts], np.float32))
    return merged, order


def normalise_eye(eye_raw: np.ndarray) -> tuple[np.ndarray, float]:
    """Eye aspect ratios [N] (NaN where unknown) -> eye openness (~1 open, 1 where unknown) and the open-eye ratio
    (the 90th percentile; 0.3 when none is known)."""
    finite = eye_raw[np.isfinite(eye_raw)]
    open_eye = float(np.percentile(finite, 90)) if finite.size else 0.3
    return np.nan_to_num(eye_raw / max(open_eye, 1e-3), nan=1.0).astype(np.float32), open_eye


def _scale_rect(rect: Any, s: float, size: int) -> np.ndarray:
    if rect is None:
        return np.array([0, 0, size, size], np.int32)
    r = np.asarray(rect, np.float64) * s
    out = np.array([np.floor(r[0]), np.floor(r[1]), np.ceil(r[2]), np.ceil(r[3])])
    return np.clip(out, 0, size).astype(np.int32)


def _usable_rows(batches: Iterable[pa.RecordBatch], picks: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
    """(k, row) for the rows at the sorted positions ``picks`` of the batches' concatenation, one batch of Python
    objects at a time; stops after the last pick."""
    start, k = 0, 0
    for batch in batches:
        if k >= picks.size:
            return
        end = start + batch.num_rows
        take = picks[k:][picks[k:] < end] - start
        if take.size:
            for r in batch.take(pa.array(take)).to_pylist():
                yield k, r
                k += 1
        start = end
