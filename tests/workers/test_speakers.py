"""The active-speaker detector's parts on signals whose answer is known (the real clips are in
``test_conversations_real.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from workers import speakers as S
from workers.voices import voice_clusters

FPS = 25.0


def _face(aperture: np.ndarray) -> np.ndarray:
    """68-point landmarks [N, 68, 2] of a face (eyes 60 px apart) whose lips open by ``aperture`` (in inter-ocular
    distances)."""
    n = len(aperture)
    lms = np.zeros((n, 68, 2), np.float32)
    lms[:, 36] = (100, 100)
    lms[:, 45] = (160, 100)
    gap = aperture * 60.0
    for top, bottom in ((61, 67), (62, 66), (63, 65), (51, 57)):
        lms[:, top] = (130, 150)
        lms[:, bottom, 0] = 130
        lms[:, bottom, 1] = 150 + gap
    return lms


def test_lip_aperture_is_the_lip_gap_in_inter_ocular_distances():
    ap = np.array([0.0, 0.1, 0.3])
    lms = _face(ap)
    assert np.allclose(S.lip_aperture(lms), ap, atol=1e-6)
    assert np.allclose(S.lip_aperture(lms * 3.0), ap, atol=1e-6)  # a bigger face, the same opening


def test_windowed_correlation_and_lag():
    rng = np.random.default_rng(0)
    a = np.convolve(rng.normal(size=300), np.ones(3) / 3, "same")
    b = np.roll(a, 2)  # b[t] = a[t - 2]: a leads by two frames
    r, lag = S.best_lag_correlation(a, b, 3)
    assert lag == -2 and r > 0.99
    w = S.windowed_correlation(a, -a, 25)
    assert np.nanmax(w) < -0.99
    a2 = a.copy()
    a2[100:200] = np.nan  # frames without a face are left out
    w2 = S.windowed_correlation(a2, a, 25)
    assert np.isnan(w2[130:170]).all() and np.nanmin(w2) > 0.99


def _conversation(n=500, seg=60, seed=0):
    """Two people whose lips both move all the time (person 1's more); the loudness follows person 0's lips in even
    segments and person 1's in odd ones; the two voices differ in their spectra."""
    rng = np.random.default_rng(seed)

    def lips():
        return np.clip(np.convolve(rng.normal(size=n), np.ones(4) / 4, "same") * 0.05 + 0.1, 0, None)

    ap = np.stack([lips(), 0.1 + 2 * (lips() - 0.1)])  # person 1's lips move twice as much, heard or not
    truth = (np.arange(n) // seg) % 2
    loud = ap[truth, np.arange(n)] * 4 + rng.normal(size=n) * 0.01
    mel = np.zeros((n, 16, 80), np.float32)
    colour = np.where(truth[:, None] == 0, np.linspace(1, 0, 80), np.linspace(0, 1, 80)) * 0.2
    mel[:] = (loud[:, None] * 0.5 + colour + rng.normal(size=(n, 80)) * 0.02)[:, None, :]
    return np.stack([_face(ap[0]), _face(ap[1])]), mel, np.ones(n), truth


def test_the_detector_follows_the_audio_not_the_mouth_that_moves():
    lms, mel, voice, truth = _conversation()
    track = S.detect_speakers(lms, mel, voice, FPS)
    assert (track.speaker == truth).mean() > 0.9
    assert track.confidence.min() >= 0 and track.confidence.max() <= 1
    assert np.allclose(track.posterior.sum(1), 1, atol=1e-5)
    roles = track.roles(0)
    assert (roles[truth == 0] == "speaker").mean() > 0.9 and (roles[truth == 1] == "listener").mean() > 0.9
    assert ((roles == "speaker") == track.speaking(0)).all()


def test_no_voice_means_nobody_speaks():
    lms, mel, _, _ = _conversation()
    track = S.detect_speakers(lms, mel, np.zeros(len(mel)), FPS)
    assert (track.speaker == S.NOBODY).all()
    assert set(track.roles(1)) == {"silent"}


def test_still_lips_do_not_own_the_voice():
    """One voice; person 1's lips hardly move (a listener's smile): person 0 speaks throughout."""
    lms, mel, voice, _ = _conversation()
    ap = S.lip_aperture(lms[0])
    lms[1] = _face(np.full(len(ap), 0.05) + np.random.default_rng(1).normal(size=len(ap)) * 0.001)
    mel[:] = (ap * 2)[:, None, None]  # the loudness follows person 0 only
    track = S.detect_speakers(lms, mel, voice, FPS)
    assert (track.speaker == 0).mean() > 0.95


def test_a_face_missing_for_a_while_does_not_flip_the_roles():
    lms, mel, voice, truth = _conversation(seg=120)
    lms[1, 150:230] = np.nan  # person 1 leaves the frame inside its own turn
    track = S.detect_speakers(lms, mel, voice, FPS)
    changes = np.count_nonzero(np.diff(track.speaker))
    assert changes <= np.count_nonzero(np.diff(truth)) + 2
    assert (track.speaker == truth).mean() > 0.85


def test_short_runs_join_a_neighbour_and_edge_silences_stay():
    post = np.full((40, 3), 0.1)
    states = np.array([0] * 5 + [1] * 10 + [0] * 3 + [1] * 2 + [2] * 15 + [0] * 5)
    post[np.arange(40), states] = 0.8
    out = S._merge_short_runs(states, post, np.array([25, 5, 5]))
    assert (out[:5] == 0).all() and (out[-5:] == 0).all()  # silence before and after all speech is kept
    assert (out[15:18] == 1).all()  # a 3-frame pause inside a turn joins it
    assert set(out[18:20]) <= {1, 2}


def test_overrides_replace_the_decision_and_name_the_people():
    lms, mel, voice, truth = _conversation()
    track = S.detect_speakers(lms, mel, voice, FPS)
    names = ["anchor", "guest"]
    S.apply_overrides(track, [S.RoleOverride(0.0, 2.0, "guest"), S.RoleOverride(2.0, 3.0, None),
                              S.RoleOverride(3.0, 3.2, "p0")], names, FPS)
    assert (track.speaker[:50] == 1).all() and (track.speaker[50:75] == S.NOBODY).all()
    assert (track.speaker[75:80] == 0).all() and (track.confidence[:80] == 1).all()
    with pytest.raises(ValueError, match="names 'host', who is not in this clip"):
        S.apply_overrides(track, [S.RoleOverride(0, 1, "host")], names, FPS)
    with pytest.raises(ValueError, match="empty or negative"):
        S.apply_overrides(track, [S.RoleOverride(2, 1, "p0")], names, FPS)


def test_voice_clusters_separate_two_spectra():
    _, mel, voice, truth = _conversation()
    from workers.voices import loudness_and_mfcc

    _, mfcc = loudness_and_mfcc(mel)
    m = (mfcc - mfcc.mean(0)) / (mfcc.std(0) + 1e-6)
    labels = voice_clusters(m, voice > 0.5, 25, 2)
    acc = (labels == truth).mean()
    assert max(acc, 1 - acc) > 0.9
