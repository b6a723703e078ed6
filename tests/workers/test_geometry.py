"""Landmark geometry measures."""

from __future__ import annotations

import numpy as np

from workers.geometry import landmark_jitter


def test_landmark_jitter_measures_noise_not_motion():
    """Smooth head motion gives ~0 jitter, per-frame noise ~1.5 sigma / iod; frames without a face are skipped."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (68, 2))
    base[36], base[45] = (20.0, 40.0), (80.0, 40.0)  # inter-ocular distance 60
    t = np.arange(200)[:, None, None]
    moving = base + np.concatenate([3 * np.sin(t / 15), 0.2 * t], axis=-1)  # slow sway and drift
    assert landmark_jitter(moving) < 0.002
    noisy = moving + rng.normal(0, 0.6, moving.shape)
    assert abs(landmark_jitter(noisy) - 1.5 * 0.6 / 60) < 0.002
    gappy = noisy.copy()
    gappy[::7] = np.nan
    assert abs(landmark_jitter(gappy) - landmark_jitter(noisy)) < 0.002
    assert np.isnan(landmark_jitter(np.full((5, 68, 2), np.nan)))
