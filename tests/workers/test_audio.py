"""Audio features: log-mel windows, ZCR, RMS, alignment with video frames."""

from __future__ import annotations

import librosa
import numpy as np

from workers.audio import AudioFeatureConfig, frame_features, log_mel, speaking_mask

SR = 16000


def _sine(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_matches_librosa():
    """The numpy log-mel equals librosa's melspectrogram with the same settings (same scaling)."""
    cfg = AudioFeatureConfig()
    y = np.random.default_rng(0).normal(0, 0.1, SR * 2).astype(np.float32)
    ours = log_mel(y, cfg)
    ref = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=320, win_length=640, n_mels=80,
                                         fmin=55, fmax=7600)
    ref = (np.clip(10 * np.log10(np.maximum(ref, 1e-10)), -100, 0) + 100) / 100
    assert ours.shape == ref.T.shape
    assert np.abs(ours - ref.T).max() < 1e-4


def test_rms_and_zcr_of_a_sine():
    """A 1 kHz sine of amplitude 0.5 has RMS 0.354 and crosses zero 2000 times a second."""
    fa = frame_features(_sine(1000, 2.0), n_frames=50)
    assert fa.mel.shape == (50, 16, 80)
    assert np.allclose(fa.rms[2:-2], 0.5 / np.sqrt(2), rtol=0.02)
    assert np.allclose(fa.zcr[2:-2], 2000 / SR, rtol=0.05)


def test_mel_window_is_centred_on_the_frame():
    """A click at 1.0 s lights up the middle of frame 25's window, not its edges."""
    y = np.zeros(SR * 2, np.float32)
    y[SR : SR + 80] = 1.0
    fa = frame_features(y, n_frames=50)
    energy = fa.mel[25].mean(1)
    assert energy.argmax() in (7, 8, 9)
    assert fa.rms[25] > 10 * fa.rms[20]


def test_short_audio_is_padded_and_marked_invalid():
    """Audio shorter than the video: silent features and audio_valid False past its end."""
    fa = frame_features(_sine(440, 1.0), n_frames=75)
    assert fa.mel.shape == (75, 16, 80)
    assert fa.valid[:25].all() and not fa.valid[25:].any()
    assert (fa.rms[30:] == 0).all() and (fa.zcr[30:] == 0).all()


def test_long_audio_is_cut_at_the_last_frame():
    """Audio longer than the video is ignored past the last frame."""
    fa = frame_features(_sine(440, 10.0), n_frames=25)
    assert fa.mel.shape[0] == 25 and fa.valid.all()


def test_no_audio_gives_silent_invalid_features():
    """An empty track gives features for every frame, all marked invalid, no speech."""
    fa = frame_features(np.zeros(0, np.float32), n_frames=10)
    assert fa.mel.shape == (10, 16, 80) and not fa.valid.any()
    assert not speaking_mask(fa.rms, fa.valid).any()


def test_speaking_mask_finds_speech_segments():
    """Energy bursts are speech, silence between them is not."""
    y = np.concatenate([_sine(300, 1.0), np.zeros(SR, np.float32), _sine(300, 1.0)])
    y += np.random.default_rng(0).normal(0, 1e-3, y.size).astype(np.float32)
    fa = frame_features(y, n_frames=75)
    speech = speaking_mask(fa.rms, fa.valid)
    assert speech[5:20].all() and not speech[30:45].any() and speech[55:70].all()
