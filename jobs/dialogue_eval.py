"""What a DialogueNeRF evaluation adds (spec 1.6 and 4.3): the generated head poses of each person's held-out
stretches against the real ones (per-axis RMSE, pitch correlation, nod rate, motion variance ratio), and the same
generation under shuffled audio as the control that tells rhythm from chance."""

from __future__ import annotations

import numpy as np

from nerf.data import IdentityFrames
from nerf.dialogue import motion
from nerf.dialogue.generate import SEED_FRAMES, Partner, generate, pose_metrics
from nerf.dialogue.model import HEAD_POSE, SPEAKING, VOICE, Dialogue

SAMPLES = 3
"""Generations per stretch (each a different draw) the metrics average over."""
FPS = 25.0


def held_out_motion(model: Dialogue, data: IdentityFrames, inputs: dict[str, np.ndarray], samples: int = SAMPLES,
                    fps: float = FPS, seed: int = 0, temperature: float = 1.0) -> dict[str, float]:
    """Pose metrics of generated motion on the held-out stretches, weighted by their lengths.

    Each stretch is one person's consecutive held-out frames of one clip: the forecaster starts from the person's
    last training poses before it, hears the stretch's audio and roles, and (in a conversation) sees the partner's
    real poses. ``pitch_corr_control`` is the pitch correlation with the audio's frames shuffled. ``temperature``
    scales the draws (:func:`nerf.dialogue.generate.generate`).

    Returns:
        :func:`nerf.dialogue.generate.pose_metrics`' keys plus ``pitch_corr_control`` and ``pose_frames``; empty
        when no stretch has two frames.
    """
    voice = motion.clip_voice(data, inputs[VOICE])
    pose6 = inputs[HEAD_POSE].astype(np.float64)
    speaking = inputs[SPEAKING]
    person = data.person_of()
    rng = np.random.default_rng(seed)
    sums: dict[str, float] = {}
    total = 0
    for run in motion.tracks(data, data.val_ids, partners=np.arange(data.n_frames)):
        rows, n = run.rows, len(run.rows)
        if n < 2:
            continue
        before = data.nearest_train(int(rows[0]), SEED_FRAMES)
        before = before[np.argsort(data.frame_index[before], kind="stable")]
        seeds = [pose6[before]] if len(before) else None
        partner = None
        if (run.partner_rows >= 0).any():  # the real partner, its missing frames filled from the nearest it has
            have = np.flatnonzero(run.partner_rows >= 0)
            pr = run.partner_rows[have[np.abs(np.arange(n)[:, None] - have[None]).argmin(1)]]
            partner = Partner(int(person[pr[0]]), pose6[pr], speaking[pr])
        for s in range(samples):
            shuffled = voice[rows][rng.permutation(n)]
            for key, v in ((False, voice[rows]), (True, shuffled)):
                m = generate(model, v, speaking[rows, None], [run.person], seeds, partner, temperature,
                             seed=seed + s)
                got = pose_metrics(m.poses[:, 0], pose6[rows], fps)
                if key:
                    got = {"pitch_corr_control": got["pitch_corr"]}
                for k, x in got.items():
                    sums[k] = sums.get(k, 0.0) + x * n / samples
        total += n
    if not total:
        return {}
    return {**{k: v / total for k, v in sums.items()}, "pose_frames": float(total)}
