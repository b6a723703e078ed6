"""The tuning harness behind the active-speaker detector's defaults: constructed conversations simulated in numpy.

Landmarks and audio of each clip are extracted once (MediaPipe, 25 fps, cached in ``--cache``); a conversation of two
clips is then their landmarks side by side and an audio track taken from one clip or the other in 2-3 s segments,
as ``benchmarks/conversations.py`` builds it, but without writing or re-reading video, so a config is scored over
dozens of pairs in seconds. ``--set key=value`` (repeatable) changes :class:`workers.speakers.SpeakerConfig`.

    PARLEY_ASSETS=../shared/assets python benchmarks/experiments/speakers_sim.py [--pairs 40] [--set av_weight=3.0]

Last line: ``mean_frame_accuracy=<x> median_frame_accuracy=<x> share_at_0_95=<x>``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import SHARED  # noqa: E402
from benchmarks.conversations import FPS, HOP, IGNORE, RATE, frame_accuracy  # noqa: E402


def signals(clip: Path, cache: Path, max_frames: int = 750) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks [N, 68, 2] NaN where no face, audio at 16 kHz) of one clip, cached."""
    out = cache / f"{clip.stem}.npz"
    if out.is_file():
        z = np.load(out)
        return z["lms"], z["audio"]
    from workers import media
    from workers.audio_decode import read_audio
    from workers.landmarks import MediaPipeLandmarker

    info = media.probe(str(clip))
    lm = MediaPipeLandmarker(1)
    lms = []
    for i, frame in enumerate(media.iter_frames(str(clip), info, FPS, max_frames, None)):
        faces = lm.detect(frame, int(i * 1000 / FPS))
        lms.append(faces[0].landmarks_68 if faces else np.full((68, 2), np.nan, np.float32))
    lm.close()
    audio = read_audio(str(clip), RATE) if info.has_audio else np.zeros(0, np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(out, lms=np.stack(lms), audio=audio)
    return np.stack(lms), audio


def simulate(a, b, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks [2, N, 68, 2], mixed audio and truth of a conversation of two clips' signals."""
    (la, aa), (lb, ab) = a, b
    n = min(len(la), len(lb), len(aa) // HOP, len(ab) // HOP)
    truth, mix = np.zeros(n, np.int64), np.zeros(n * HOP, np.float32)
    t, who = 0, int(rng.integers(2))
    while t < n:
        e = min(n, t + int(round(rng.uniform(2, 3) * FPS)))
        truth[t:e] = who
        mix[t * HOP : e * HOP] = (aa if who == 0 else ab)[t * HOP : e * HOP]
        t, who = e, 1 - who
    rms = np.sqrt((mix.reshape(n, HOP).astype(np.float64) ** 2).mean(1))
    quiet = np.convolve(rms > 0.05 * np.percentile(rms, 95), np.ones(5), "same") == 0
    edges = np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0]))
    for s, e in zip(edges[::2], edges[1::2], strict=True):
        truth[s:e] = -1 if (e - s >= FPS or s == 0 or e == n) else IGNORE
    return np.stack([la[:n], lb[:n]]), mix, truth


def main() -> int:
    import yaml

    from workers import speakers as S
    from workers.audio import frame_features
    from workers.voices import VoiceActivity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path)
    parser.add_argument("--pairs", type=int, default=40, help="random pairs of clips (seed 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/parley_speakers_sim"))
    args = parser.parse_args()
    clips = args.clips or sorted(p for p in [*(SHARED / "data" / "corpus").iterdir(),
                                             *(SHARED / "data" / "clips").glob("*.mp4")] if p.suffix != ".csv")
    cfg = S.SpeakerConfig()
    for item in args.set:
        key, _, value = item.partition("=")
        cfg = replace(cfg, **{key: yaml.safe_load(value)})
    data = {c.stem: signals(c, args.cache) for c in clips}
    data = {k: v for k, v in data.items() if len(v[1]) >= 4 * RATE}  # at least 4 s of audio
    pairs = list(itertools.combinations(sorted(data), 2))
    np.random.default_rng(1).shuffle(pairs)
    vad, rng, accs = VoiceActivity(), np.random.default_rng(0), []
    for a, b in pairs[: args.pairs]:
        lms, mix, truth = simulate(data[a], data[b], rng)
        n = lms.shape[1]
        fa = frame_features(mix, n)
        track = S.detect_speakers(lms, fa.mel, vad(mix, n, FPS), FPS, cfg)
        accs.append(frame_accuracy(track.speaker, truth))
        print(f"{a} | {b}: frames={n} accuracy={accs[-1]:.3f}", flush=True)
    acc = np.array(accs)
    print(f"mean_frame_accuracy={acc.mean():.3f} median_frame_accuracy={np.median(acc):.3f} "
          f"share_at_0_95={(acc >= 0.95).mean():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
