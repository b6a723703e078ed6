"""Audio features aligned to video frames: log-mel windows, ZCR and RMS.

The same function serves the dataset build and rendering, so a model always sees audio features
computed exactly as in its training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np

from workers.config import AudioFeatureConfig


@dataclass
class FrameAudio:
    """Audio features of every video frame of a clip."""

    mel: np.ndarray
    """float32 [N, window, n_mels], in [0, 1]."""
    zcr: np.ndarray
    """float32 [N]: zero-crossing rate over the frame's span."""
    rms: np.ndarray
    """float32 [N]: root-mean-square amplitude over the frame's span."""
    valid: np.ndarray
    """bool [N]: the frame's time is covered by the audio track (False where it was padded)."""


def log_mel(samples: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    """Log-mel spectrogram scaled to [0, 1].

    Args:
        samples: float32 [S] mono audio at ``cfg.sample_rate``.
        cfg: feature settings.

    Returns:
        float32 [T, n_mels], T = ceil(S / hop) mel frames, frame t centred at t * hop_s.
    """
    hop = int(round(cfg.hop_s * cfg.sample_rate))
    win = int(round(cfg.win_s * cfg.sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    if samples.size == 0:
        return np.zeros((0, cfg.n_mels), np.float32)
    # Centred STFT (zero padding, as librosa >= 0.10), Hann window of `win` samples zero-padded to n_fft: the same
    # frames as librosa.stft(center=True) without its first-call JIT cost.
    pad = n_fft // 2
    y = np.pad(samples.astype(np.float32), pad, mode="constant")
    n_frames = 1 + (y.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(y, (n_frames, n_fft), (y.strides[0] * hop, y.strides[0]))
    window = np.zeros(n_fft, np.float32)
    off = (n_fft - win) // 2
    window[off : off + win] = np.hanning(win + 1)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # [T, n_fft/2+1]
    mel = power @ _mel_basis(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).T
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    scaled = (np.clip(db, cfg.min_db, 0.0) - cfg.min_db) / -cfg.min_db
    return scaled.astype(np.float32)


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


def frame_features(
    samples: np.ndarray, n_frames: int, fps: float = 25.0, cfg: AudioFeatureConfig | None = None
) -> FrameAudio:
    """Per-video-frame audio features.

    Audio shorter than the video is padded with silence (and ``valid`` is False there); longer
    audio is ignored past the last frame.

    Args:
        samples: float32 [S] mono audio at ``cfg.sample_rate`` (may be empty).
        n_frames: number of video frames N.
        fps: video frame rate.
        cfg: feature settings.

    Returns:
        The clip's :class:`FrameAudio`.
    """
    cfg = cfg or AudioFeatureConfig()
    sr = cfg.sample_rate
    video_s = n_frames / fps
    span = int(round(sr / fps))  # samples per video frame
    need = int(np.ceil(video_s * sr)) + span
    audio_len = samples.size
    padded = np.zeros(max(need, audio_len), np.float32)
    padded[:audio_len] = samples[: padded.size]
    padded = padded[:need]

    mel = log_mel(padded, cfg)  # [T, C]
    mel_per_video = (1.0 / fps) / cfg.hop_s
    half = cfg.window // 2
    centres = np.round(np.arange(n_frames) * mel_per_video).astype(np.int64)
    idx = centres[:, None] + np.arange(-half, cfg.window - half)[None, :]
    idx = np.clip(idx, 0, max(mel.shape[0] - 1, 0))
    windows = mel[idx] if mel.shape[0] else np.zeros((n_frames, cfg.window, cfg.n_mels), np.float32)

    # ZCR and RMS over each frame's own span [t - span/2, t + span/2).
    starts = np.clip((np.arange(n_frames) / fps * sr).astype(np.int64) - span // 2, 0, None)
    seg = np.stack([padded[s : s + span] if s + span <= padded.size else
                    np.pad(padded[s:], (0, s + span - padded.size)) for s in starts]) if n_frames else \
        np.zeros((0, span), np.float32)
    rms = np.sqrt(np.mean(seg.astype(np.float64) ** 2, axis=1)).astype(np.float32)
    signs = np.signbit(seg)
    zcr = (np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / max(span - 1, 1)).astype(np.float32)
    zcr[rms < 1e-6] = 0.0
    times = np.arange(n_frames) / fps
    valid = times < (audio_len / sr)
    return FrameAudio(mel=windows.astype(np.float32), zcr=zcr, rms=rms, valid=valid)


def speaking_mask(rms: np.ndarray, valid: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """A simple voice-activity decision per frame from RMS (energy above an adaptive threshold).

    Args:
        rms: float32 [N] frame RMS.
        valid: bool [N] frames covered by audio.
        fps: frame rate, for the smoothing window (0.2 s).

    Returns:
        bool [N].
    """
    if rms.size == 0 or not valid.any():
        return np.zeros(rms.shape, bool)
    db = 20 * np.log10(np.maximum(rms, 1e-6))
    floor = np.percentile(db[valid], 10)
    peak = np.percentile(db[valid], 95)
    thr = max(floor + 0.35 * (peak - floor), -50.0)
    k = max(int(round(0.2 * fps)), 1)
    # "full" then cut to the input's centred span: "same" returns max(len, k) values, too many for a short clip
    full = np.convolve((db > thr).astype(np.float32), np.ones(k) / k, mode="full")
    smooth = full[(k - 1) // 2: (k - 1) // 2 + db.size]
    return (smooth >= 0.5) & valid
