"""The motion of a conversation's people: training sequences for the forecasters from the frames (both people of a
clip, frame by frame), and the autoregressive generation of head poses and listener expressions from new audio.

Inputs per frame (spec 1.3-B, 1.5): the audio's rhythm (log-RMS and ZCR, z-scored over the clip or the driving
audio), who speaks (this person, the partner), whether there is a partner, and the partner's last pose. States are
normalised per person: a pose by its person's training mean and spread, an expression by the set's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf.data import PERSON_SEP, IdentityFrames

POSE_COND = 11
"""Pose forecaster's known inputs: voice (2), speaking self/partner (2), partner present (1), partner's pose (6)."""
EXPRESSION_COND = 5
"""Expression forecaster's known inputs: voice (2), speaking self/partner (2), partner present (1)."""
MIN_POSE_STD = np.array([np.radians(0.5)] * 3 + [0.001] * 3)
"""Smallest per-dimension spread a person's poses are normalised by (0.5 degree, 1 mm)."""
MAX_GAP = 2
"""Frames at most this far apart in a clip continue one sequence."""


def voice_features(zcr: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """[T, 2] log-RMS and ZCR of one stretch of audio, each z-scored over it (the rhythm, not the loudness)."""
    x = np.stack([np.log(np.nan_to_num(np.asarray(rms, np.float64), nan=0.0) + 1e-4),
                  np.nan_to_num(np.asarray(zcr, np.float64), nan=0.0)], -1)
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


@dataclass
class Track:
    """One person's consecutive training frames in one clip."""

    person: int
    rows: np.ndarray
    """int64 [T] rows of the frames."""
    partner_rows: np.ndarray
    """int64 [T] the partner's row at the same frame of the clip, -1 where none."""


def tracks(data: IdentityFrames, rows: np.ndarray, partners: np.ndarray | None = None) -> list[Track]:
    """The runs of consecutive frames (at most :data:`MAX_GAP` apart) of each person and clip among ``rows``, each
    with the other person's row of the same clip frame (a conversation's two people share their clip) among
    ``partners`` (default: ``rows``; an evaluation of held-out frames passes every frame, since each person's
    split falls at its own moment of the clip)."""
    person = data.person_of()
    raw_clip = [c.split(PERSON_SEP, 1)[-1] for c in data.clip_ids]
    pool = rows if partners is None else partners
    where = {(raw_clip[r], int(data.frame_index[r]), int(person[r])): int(r) for r in pool}
    out = []
    order = sorted(rows.tolist(), key=lambda r: (int(person[r]), raw_clip[r], int(data.frame_index[r])))
    run: list[int] = []
    for r in [*order, -1]:
        if run and (r < 0 or person[r] != person[run[-1]] or raw_clip[r] != raw_clip[run[-1]]
                    or not 0 < data.frame_index[r] - data.frame_index[run[-1]] <= MAX_GAP):
            k = int(person[run[0]])
            partners = np.array([max((where.get((raw_clip[i], int(data.frame_index[i]), p), -1)
                                      for p in range(data.n_people) if p != k), default=-1) for i in run])
            out.append(Track(k, np.array(run, np.int64), partners))
            run = []
        if r >= 0:
            run.append(r)
    return out


def pose_stats(pose6: np.ndarray, person: np.ndarray, rows: np.ndarray, n_people: int) -> np.ndarray:
    """float32 [P, 2, 6]: each person's mean and spread (std, at least :data:`MIN_POSE_STD`) over ``rows``."""
    out = np.zeros((n_people, 2, 6), np.float32)
    out[:, 1] = MIN_POSE_STD
    for k in range(n_people):
        x = pose6[rows[person[rows] == k]]
        if len(x):
            out[k, 0], out[k, 1] = x.mean(0), np.maximum(x.std(0), MIN_POSE_STD)
    return out


def sequences(data: IdentityFrames, runs: list[Track], pose_n: np.ndarray, expression_n: np.ndarray,
              speaking: np.ndarray, voice: np.ndarray) -> tuple[tuple[list, list], tuple[list, list]]:
    """The forecasters' training sequences from tracks: ((pose conds, pose states), (expression conds, expression
    states)), one of each per track, with normalised poses ``pose_n`` [N, 6] and expressions ``expression_n``
    [N, E], ``speaking`` [N] and per-clip ``voice`` [N, 2]."""
    pc, ps, ec, es = [], [], [], []
    for tr in runs:
        has = tr.partner_rows >= 0
        partner = np.where(has, tr.partner_rows, 0)
        p_speak = np.where(has, speaking[partner], 0.0)
        p_pose = np.where(has[:, None], pose_n[partner], 0.0)
        p_pose = np.concatenate([p_pose[:1], p_pose[:-1]])  # the partner's pose one frame before
        known = np.concatenate([voice[tr.rows], speaking[tr.rows, None], p_speak[:, None], has[:, None]], -1)
        pc.append(np.concatenate([known, p_pose], -1).astype(np.float32))
        ps.append(pose_n[tr.rows].astype(np.float32))
        ec.append(known.astype(np.float32))
        es.append(expression_n[tr.rows].astype(np.float32))
    return (pc, ps), (ec, es)


def clip_voice(data: IdentityFrames, voice_raw: np.ndarray) -> np.ndarray:
    """[N, 2] (ZCR, RMS) per frame -> :func:`voice_features` z-scored within each person's clip."""
    out = np.zeros((data.n_frames, 2), np.float32)
    keys = np.asarray(data.clip_ids)
    for c in np.unique(keys):
        rows = np.flatnonzero(keys == c)
        rows = rows[np.argsort(data.frame_index[rows], kind="stable")]
        out[rows] = voice_features(voice_raw[rows, 0], voice_raw[rows, 1])
    return out
