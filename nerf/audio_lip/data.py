"""The arrays the audio-lip models train on, one row per frame of one person, and pose-free landmarks.

Rows are grouped by clip (contiguous, in frame order), which is what the samplers need: the landmark autoencoder
pairs frames of one clip, the audio encoder and the scorer draw contiguous stretches of one clip so that other
times of the same clip are the hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

RIGID = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
"""Landmarks that move with the head but not with speech (nose bridge and base, eye corners): the alignment's points."""
KEEP = np.arange(17, 68)
"""JEAN drops the 17 jaw-contour points: 51 remain."""
MOUTH = np.arange(48 - 17, 68 - 17)
"""The mouth's 20 points inside the 51 kept (the last 20)."""
SCORER_AUDIO = slice(3, 13)
"""The 10 mel frames (0.2 s, hop 20 ms) at the centre of a frame's 16-frame window: the scorer's audio span, the
same 0.2 s as its 5 video frames."""


def _normalise(lms: np.ndarray) -> np.ndarray:
    """A per-frame similarity normalisation: rigid points centred, eye line horizontal, unit eye distance."""
    left, right = lms[:, 36:42].mean(1), lms[:, 42:48].mean(1)
    eye = right - left
    d = np.maximum(np.linalg.norm(eye, axis=1), 1e-6)
    cos, sin = eye[:, 0] / d, eye[:, 1] / d
    rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1) / d[:, None, None]
    centre = lms[:, RIGID].mean(1, keepdims=True)
    return np.einsum("nij,npj->npi", rot, lms - centre)


def _procrustes(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame similarity (scale, rotation, translation) taking src [N, P, 2] onto dst [P, 2] (Umeyama)."""
    mu_s, mu_d = src.mean(1, keepdims=True), dst.mean(0, keepdims=True)
    s0, d0 = src - mu_s, dst - mu_d
    cov = np.einsum("pi,npj->nij", d0, s0)  # [N, 2, 2]
    u, sig, vt = np.linalg.svd(cov)
    flip = np.sign(np.linalg.det(u @ vt))
    sig[:, 1] *= flip
    u[:, :, 1] *= flip[:, None]
    rot = u @ vt
    scale = sig.sum(1) / np.maximum((s0**2).sum((1, 2)), 1e-12)
    return scale, rot, mu_d - scale[:, None, None] * np.einsum("nij,npj->npi", rot, mu_s)


def rigid_template(lms: np.ndarray) -> np.ndarray:
    """The mean normalised shape of a set of frames [N, 68, 2]: the alignment target, kept in the checkpoint."""
    return _normalise(lms.astype(np.float64)).mean(0).astype(np.float32)


def canonical_landmarks(lms: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Pose-free landmarks: each frame's rigid points aligned (similarity) onto the template's, jaw dropped.

    Args:
        lms: [N, 68, 2] pixel landmarks.
        template: [68, 2] (:func:`rigid_template`).

    Returns:
        float32 [N, 51, 2] in eye-distance units.
    """
    n = _normalise(lms.astype(np.float64))
    scale, rot, t = _procrustes(n[:, RIGID], template[RIGID].astype(np.float64))
    out = scale[:, None, None] * np.einsum("nij,npj->npi", rot, n) + t
    return out[:, KEEP].astype(np.float32)


@dataclass
class AudioLipData:
    """Per-frame arrays of many clips, rows grouped by clip in frame order."""

    landmarks: np.ndarray
    """float32 [N, 68, 2] pixel landmarks of the person crop."""
    mel: np.ndarray
    """float32 [N, 16, 80] log-mel windows (``audio_features``)."""
    crops: np.ndarray
    """uint8 [N, 48, 96] grayscale mouth crops (:func:`workers.mouth.mouth_crop`)."""
    clip: np.ndarray
    """int64 [N] clip index into ``clip_ids``."""
    frame: np.ndarray
    """int64 [N] frame index within the clip."""
    valid: np.ndarray
    """bool [N]: face found and audio present."""
    clip_ids: list[str]
    clip_identity: list[str]
    """The identity of each clip (same order as ``clip_ids``)."""

    def __post_init__(self) -> None:
        n = len(self.clip)
        for f in ("landmarks", "mel", "crops", "frame", "valid"):
            if len(getattr(self, f)) != n:
                raise ValueError(f"AudioLipData.{f} has {len(getattr(self, f))} rows, clip has {n}")
        if n and np.any(np.diff(self.clip) < 0):
            raise ValueError("AudioLipData rows must be sorted by clip")

    def __len__(self) -> int:
        return len(self.clip)

    def spans(self) -> np.ndarray:
        """int64 [C, 2]: each clip's (first row, end row)."""
        starts = np.searchsorted(self.clip, np.arange(len(self.clip_ids)), "left")
        ends = np.searchsorted(self.clip, np.arange(len(self.clip_ids)), "right")
        return np.stack([starts, ends], 1)

    def subset(self, clips: list[str]) -> AudioLipData:
        """The rows of some clips (by id), in this data's order."""
        keep = [i for i, c in enumerate(self.clip_ids) if c in set(clips)]
        rows = np.isin(self.clip, keep)
        remap = np.full(len(self.clip_ids), -1, np.int64)
        remap[keep] = np.arange(len(keep))
        arrays = {f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name not in ("clip_ids",
                                                                                            "clip_identity")}
        arrays["clip"] = remap[self.clip[rows]]
        return AudioLipData(**arrays, clip_ids=[self.clip_ids[i] for i in keep],
                            clip_identity=[self.clip_identity[i] for i in keep])


def window_starts(data: AudioLipData, length: int) -> np.ndarray:
    """Rows where a run of ``length`` consecutive valid frames of one clip starts (frame indices contiguous)."""
    n = len(data)
    if n < length:
        return np.zeros(0, np.int64)
    ok = data.valid.astype(np.int64)
    step = np.ones(n, bool)
    step[1:] = (data.clip[1:] == data.clip[:-1]) & (data.frame[1:] == data.frame[:-1] + 1)
    good = ok.copy()
    good[1:] &= step[1:].astype(np.int64)  # a row continues the previous one's run
    run = np.zeros(n, np.int64)
    for i in range(n):  # length of the valid contiguous run ending at i
        run[i] = (run[i - 1] + 1 if i and good[i] else ok[i])
    ends = np.flatnonzero(run >= length)
    return ends - length + 1


def lae_pairs(spans: np.ndarray, valid: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``n`` pairs of valid rows of the same clip, the clip drawn in proportion to its valid rows."""
    rows = np.flatnonzero(valid)
    a = rng.choice(rows, n)
    clip_of = np.searchsorted(spans[:, 1], a, "right")
    lo, hi = spans[clip_of, 0], spans[clip_of, 1]
    b = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
    b = np.where(valid[b], b, a)
    return a, b


def video_windows(crops: np.ndarray, centres: np.ndarray, frames: int = 5) -> np.ndarray:
    """uint8 [T, h, w] crops -> [len(centres), frames, h, w] windows centred on the given frames."""
    half = frames // 2
    idx = np.clip(centres[:, None] + np.arange(-half, frames - half)[None, :], 0, len(crops) - 1)
    return crops[idx]
