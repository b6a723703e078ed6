"""Motion from audio with a trained DialogueNeRF model: both people's head poses (6-D) and expressions generated
frame by frame by its forecasters (autoregressive, each person's own output fed back, spec 1.5), and the numeric
pose metrics the paper only plotted (spec 4.3: per-axis RMSE, pitch correlation, nod rate, motion variance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerf.dialogue.forecast import rollout
from nerf.dialogue.model import Dialogue

SEED_FRAMES = 8
"""Frames of history a generation starts from when none is given (the person's mean pose; for expressions, the
training frames' mean)."""


@dataclass
class Motion:
    """Generated motion of P people over T frames."""

    poses: np.ndarray
    """float64 [T, P, 6] (pitch, yaw, roll in radians, tx, ty, tz in metres; :mod:`workers.pose`)."""
    expression: np.ndarray
    """float32 [T, P, E] normalised expressions (the model's condition space)."""


@dataclass
class Partner:
    """A real partner's track, for generating one person's motion beside it (evaluation on held-out frames)."""

    person: int
    """The partner's index in the model."""
    poses: np.ndarray
    """[T, 6] the partner's 6-D poses."""
    speaking: np.ndarray
    """[T] 1 where the partner speaks."""


@torch.no_grad()
def generate(model: Dialogue, voice: np.ndarray, speaking: np.ndarray, people: list[int],
             seed_poses: list[np.ndarray] | None = None, partner: Partner | None = None,
             temperature: float = 1.0, seed: int = 0) -> Motion:
    """Generate the motion of ``people`` (the model's person indices, one or two) over ``T`` frames of audio.

    Args:
        voice: [T, 2] :func:`nerf.dialogue.motion.voice_features` of the audio.
        speaking: [T, P] 1 where that person speaks.
        people: the model's index of each stream's person; with two, each is the other's partner.
        seed_poses: per person, [w, 6] poses before frame 0 (default: the person's mean pose).
        partner: with one person, a real partner beside it (default: none, as in a solo clip).
        temperature: scale of the sampled deviations (0: each step's most likely value).
        seed: the draws.

    Raises:
        ValueError: shapes that do not agree, or a person the model lacks.
    """
    t_count, p_count = len(voice), len(people)
    if voice.shape != (t_count, 2) or speaking.shape != (t_count, p_count) or not 1 <= p_count <= 2:
        raise ValueError(f"generate: voice {list(voice.shape)} and speaking {list(speaking.shape)} must be [T, 2] and "
                         f"[T, P] for P = {p_count} people (1 or 2)")
    if partner is not None and (p_count != 1 or partner.poses.shape != (t_count, 6)):
        raise ValueError("generate: a real partner goes with one generated person and one pose per frame")
    bad = [p for p in [*people, *([partner.person] if partner else [])] if not 0 <= p < model.n_people]
    if bad:
        raise ValueError(f"generate: person {bad[0]} is not one of the model's {model.n_people}")
    stats = model.pose_stats.cpu().numpy().astype(np.float64)
    bounds = model.pose_bounds.cpu().numpy()[people]
    if seed_poses is None:
        seeds = [np.zeros((SEED_FRAMES, 6), np.float32) for _ in people]
    else:
        seeds = [((np.asarray(s, np.float64).reshape(-1, 6) - stats[p, 0]) / stats[p, 1]).astype(np.float32)
                 for s, p in zip(seed_poses, people, strict=True)]
    known = None if partner is None else (partner.poses - stats[partner.person, 0]) / stats[partner.person, 1]

    def others(t: int, last: np.ndarray) -> list[tuple[np.ndarray, float, float]]:
        """Per stream: its partner's pose one frame before, whether the partner speaks, whether there is one."""
        if known is not None and partner is not None:
            return [(known[max(t - 1, 0)], float(partner.speaking[t]), 1.0)]
        if p_count == 2:
            return [(last[1 - k], float(speaking[t, 1 - k]), 1.0) for k in range(2)]
        return [(np.zeros(6), 0.0, 0.0)]

    def pose_cond(t: int, last: np.ndarray) -> np.ndarray:
        return np.stack([np.concatenate([voice[t], [speaking[t, k], p_speak, has], p_pose])
                         for k, (p_pose, p_speak, has) in enumerate(others(t, last))])

    def expression_cond(t: int, last: np.ndarray) -> np.ndarray:
        return np.stack([np.concatenate([voice[t], [speaking[t, k], p_speak, has]])
                         for k, (_, p_speak, has) in enumerate(others(t, np.zeros((p_count, 6))))])

    g = torch.Generator().manual_seed(seed)
    pose_n = rollout([model.pose_forecaster] * p_count, pose_cond, seeds, t_count, g, temperature,
                     bounds=(bounds[:, 0], bounds[:, 1]))
    e_dim = model.dialogue.expression_dim
    e_lo, e_hi = model.expression_bounds.cpu().numpy()
    expr = rollout([model.expression_forecaster] * p_count, expression_cond,
                   [np.zeros((SEED_FRAMES, e_dim), np.float32) for _ in people], t_count, g, temperature,
                   bounds=(np.stack([e_lo] * p_count), np.stack([e_hi] * p_count)))
    poses = pose_n.astype(np.float64) * stats[people, 1] + stats[people, 0]
    return Motion(poses=poses, expression=expr)


def nods_per_minute(pitch: np.ndarray, fps: float, min_deg: float = 1.0) -> float:
    """Nods per minute in a pitch track (radians): peaks of the pitch, after removing its 1-s moving average, at
    least ``min_deg`` prominent and 0.3 s apart (the paper counts ~38 per minute, Table I)."""
    from scipy.signal import find_peaks

    if len(pitch) < 3:
        return 0.0
    deg = np.degrees(np.asarray(pitch, np.float64))
    w = max(int(round(fps)), 1)
    trend = np.convolve(np.pad(deg, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, mode="valid")
    peaks, _ = find_peaks(deg - trend, prominence=min_deg, distance=max(int(0.3 * fps), 1))
    return float(len(peaks) / (len(deg) / fps / 60.0))


def pose_metrics(pred: np.ndarray, truth: np.ndarray, fps: float) -> dict[str, float]:
    """Generated 6-D poses [T, 6] against the real ones [T, 6]: per-axis RMSE (degrees, millimetres), pitch
    correlation, nod rates, and the motion variance ratio (variance of the generated angles over the real ones';
    near 0: a still head, the regression-to-the-mean failure)."""
    p, t = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 6 or len(p) < 2:
        raise ValueError(f"pose metrics: pred {list(p.shape)} and truth {list(t.shape)} must both be [T>1, 6]")
    err = p - t
    out = {f"pose_rmse_{k}_deg": float(np.degrees(np.sqrt((err[:, i] ** 2).mean())))
           for i, k in enumerate(("pitch", "yaw", "roll"))}
    out.update({f"pose_rmse_t{k}_mm": float(1000 * np.sqrt((err[:, 3 + i] ** 2).mean()))
                for i, k in enumerate("xyz")})
    out["pose_rmse_deg"] = float(np.degrees(np.sqrt((err[:, :3] ** 2).mean())))
    sp, st = p[:, 0].std(), t[:, 0].std()
    out["pitch_corr"] = float(np.corrcoef(p[:, 0], t[:, 0])[0, 1]) if sp > 1e-9 and st > 1e-9 else 0.0
    out["nods_per_min"], out["nods_per_min_gt"] = nods_per_minute(p[:, 0], fps), nods_per_minute(t[:, 0], fps)
    out["motion_var_ratio"] = float(p[:, :3].var(0).sum() / max(t[:, :3].var(0).sum(), 1e-12))
    return out
