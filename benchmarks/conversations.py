"""Constructed conversations with known truth, for the active-speaker benchmark and tests.

Two talking clips side by side (ffmpeg ``hstack``); the audio alternates between the two people's own tracks in
segments of 2-3 s, while BOTH videos keep moving their mouths (the one not heard is muted, not still). A detector
that follows the mouth that moves most fails here; one that follows the audio-visual correspondence succeeds.
Truth per frame: the person whose audio is heard; nobody in silences of a second or more (the detector's turn-level
convention, :attr:`workers.speakers.SpeakerConfig.min_silence_s`); shorter pauses (and the start of a segment
whose person has not started talking yet) are not scored (:data:`IGNORE`): who holds the turn there is a matter
of convention, not of detection.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25.0
RATE = 16000
HOP = int(RATE / FPS)
IGNORE = -2
"""Truth of frames that are not scored."""


@dataclass
class Conversation:
    """A constructed two-person clip and its truth."""

    path: Path
    truth: np.ndarray
    """int [N]: 0 (left), 1 (right), -1 (nobody) or :data:`IGNORE` per 25-fps frame."""
    switches: np.ndarray
    """Frame indices where the truth changes."""


def construct(left: Path, right: Path, out: Path, seed: int = 0, height: int = 360,
              segment_s: tuple[float, float] = (2.0, 3.0), max_s: float | None = None,
              canvas: tuple[int, int] | None = None) -> Conversation:
    """Write a constructed conversation of two clips to ``out`` (mp4, H.264 + AAC) and return its truth.

    Args:
        left, right: talking clips (each person's own audio and video).
        out: the mp4 to write.
        seed: random segment lengths and first speaker.
        height: pixel height both videos are scaled to.
        segment_s: range of segment lengths (s).
        max_s: cut the conversation to this length (default: the shorter clip).
        canvas: (width, height) of a grey frame the pair is placed on, centred (a wide shot: with ``height`` 200,
            the shared 512-px clips' faces become ~100 px wide).
    """
    from workers import media
    from workers.audio_decode import read_audio

    audio = [read_audio(str(p), RATE) for p in (left, right)]
    dur = min(media.probe(str(left)).video_duration_s, media.probe(str(right)).video_duration_s,
              *(len(a) / RATE for a in audio))
    n = int(np.floor(min(dur, max_s or dur) * FPS))
    rng = np.random.default_rng(seed)
    truth = np.zeros(n, np.int64)
    mix = np.zeros(n * HOP, np.float32)
    t, who = 0, int(rng.integers(2))
    while t < n:
        e = min(n, t + int(round(rng.uniform(*segment_s) * FPS)))
        truth[t:e] = who
        mix[t * HOP : e * HOP] = audio[who][t * HOP : e * HOP]
        t, who = e, 1 - who
    rms = np.sqrt((mix.reshape(n, HOP).astype(np.float64) ** 2).mean(1))
    quiet = np.convolve(rms > 0.05 * np.percentile(rms, 95), np.ones(5), "same") == 0  # no sound within 0.1 s
    edges = np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0]))
    for s, e in zip(edges[::2], edges[1::2], strict=True):
        truth[s:e] = -1 if (e - s >= FPS or s == 0 or e == n) else IGNORE

    import soundfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "mix.wav"
        soundfile.write(str(wav), mix, RATE)
        graph = (f"[0:v]fps={FPS:g},scale=-2:{height},setsar=1[a];[1:v]fps={FPS:g},scale=-2:{height},setsar=1[b];"
                 "[a][b]hstack=inputs=2" + (f",pad={canvas[0]}:{canvas[1]}:(ow-iw)/2:(oh-ih)/2:color=gray"
                                            if canvas else "") + "[v]")
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(left), "-i", str(right), "-i", str(wav),
               "-filter_complex", graph, "-map", "[v]", "-map", "2:a", "-t", f"{n / FPS:.3f}",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", "128k", str(out)]
        subprocess.run(cmd, check=True)
    return Conversation(out, truth, np.flatnonzero(np.diff(truth)) + 1)


def frame_accuracy(pred: np.ndarray, truth: np.ndarray, ignore_s: float = 0.2) -> float:
    """Share of frames whose speaker (-1 nobody) is right, leaving out ``ignore_s`` on each side of every change of
    the truth (where a human labeller would not agree to the frame either)."""
    n = min(len(pred), len(truth))
    keep = truth[:n] != IGNORE
    pad = int(round(ignore_s * FPS))
    scored = np.where(truth[:n] == IGNORE, -1, truth[:n])  # a pause is no switch
    for s in np.flatnonzero(np.diff(scored)) + 1:
        keep[max(s - pad, 0) : s + pad] = False
    return float((pred[:n][keep] == truth[:n][keep]).mean()) if keep.any() else float("nan")


def segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of one speaker (not nobody): (start, end exclusive, speaker)."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts, ends = np.r_[0, edges], np.r_[edges, len(labels)]
    return [(int(s), int(e), int(labels[s])) for s, e in zip(starts, ends, strict=True) if labels[s] >= 0]


def segment_f1(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> float:
    """F1 of speaker segments: a predicted segment matches a true one of the same speaker overlapping it with
    intersection over union >= ``min_iou`` (each true segment matched once)."""
    p, t = segments(pred), segments(np.where(truth == IGNORE, -1, truth))
    used, hits = set(), 0
    for s, e, k in p:
        for j, (ts, te, tk) in enumerate(t):
            inter = max(0, min(e, te) - max(s, ts))
            if j not in used and tk == k and inter / (max(e, te) - min(s, ts)) >= min_iou:
                used.add(j)
                hits += 1
                break
    if not p or not t:
        return float(not p and not t)
    precision, recall = hits / len(p), hits / len(t)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
