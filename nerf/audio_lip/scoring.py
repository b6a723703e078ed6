"""The SyncNet scoring protocol (syncnet_python) on our scorer, and the audio encoder's retrieval check.

For each frame t and offset o in [-15, 15]: dist(t, o) = ||v_t - a_{t+o}|| on unit embeddings; mdist(o) is its mean
over t; LSE-D = min_o mdist(o), the offset is the argmin, LSE-C = median_o mdist(o) - LSE-D. A positive offset means
the audio lags the video (audio delayed by k frames is detected as +k).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from nerf.audio_lip.data import SCORER_AUDIO, lae_pairs, video_windows
from nerf.audio_lip.models import AudioLipEncoder, LandmarkAE, SyncScorer, swap_targets

MAX_OFFSET = 15
"""Offsets searched either way, in video frames (the published protocol)."""
PROTOCOL = "syncnet-lse/1: offsets -15..15 frames at 25 fps, 5-frame mouth windows, 0.2 s audio, L2 on unit codes"
"""Written beside every score, so numbers from different protocol versions are never compared."""


class SyncScoreError(ValueError):
    """A video too short, or with too few frames showing a mouth, to score."""


@dataclass
class SyncScore:
    lse_c: float
    """Confidence: median minus minimum of the mean distance over offsets (higher = clearer sync)."""
    lse_d: float
    """Mean distance at the best offset (lower = closer)."""
    offset: int
    """Best offset in frames (positive: the audio lags)."""
    frames: int
    """Frames that were scored."""
    distances: list[float]
    """mdist(o) for o = -15..15."""

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return asdict(self)

    def line(self) -> str:
        return f"lse_c={self.lse_c:.4f} lse_d={self.lse_d:.4f} offset={self.offset}"


@torch.no_grad()
def embed_video(scorer: SyncScorer, crops: np.ndarray, centres: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Unit visual codes [len(centres), dim] of the 5-frame windows centred on some frames."""
    scorer.eval()
    return torch.cat([scorer.embed_video(torch.from_numpy(video_windows(crops, centres[s : s + batch],
                                                                        scorer.config.frames)))
                      for s in range(0, len(centres), batch)])


@torch.no_grad()
def embed_audio(scorer: SyncScorer, mel: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Unit audio codes [A, dim] of audio windows [A, 16, 80] (their centre 0.2 s)."""
    scorer.eval()
    return torch.cat([scorer.embed_audio(torch.from_numpy(np.ascontiguousarray(mel[s : s + batch][:, SCORER_AUDIO])))
                      for s in range(0, len(mel), batch)])


def offset_distances(v: torch.Tensor, a: torch.Tensor, valid: np.ndarray,
                     max_offset: int = MAX_OFFSET) -> tuple[np.ndarray, int]:
    """mdist(o) for o in [-max_offset, max_offset] over frames t whose windows (and t+o's) are all valid."""
    t_all = np.arange(max_offset, len(v) - max_offset)
    ok = np.ones(len(valid), bool)
    ok[1:-1] = valid[:-2] & valid[1:-1] & valid[2:]  # the visual window's centre and neighbours
    t = t_all[ok[t_all] & np.all([valid[t_all + o] for o in range(-max_offset, max_offset + 1)], 0)]
    if len(t) == 0:
        return np.zeros(0), 0
    tt = torch.from_numpy(t)
    d = [torch.linalg.vector_norm(v[tt] - a[tt + o], dim=1).mean().item() for o in range(-max_offset, max_offset + 1)]
    return np.asarray(d), len(t)


def sync_score(scorer: SyncScorer, crops: np.ndarray, mel: np.ndarray, valid: np.ndarray | None = None,
               max_offset: int = MAX_OFFSET, min_frames: int = 10) -> SyncScore:
    """LSE-C, LSE-D and the offset of one video (per-frame mouth crops and audio windows).

    Raises:
        SyncScoreError: fewer than ``min_frames`` frames can be scored at every offset (a clip under about 1.4 s,
            or a mouth seen too rarely).
    """
    n = len(crops)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if n < 2 * max_offset + min_frames:
        raise SyncScoreError(f"{n} frames: the lip-sync score needs at least {2 * max_offset + min_frames} "
                             f"({(2 * max_offset + min_frames) / 25:.1f} s at 25 fps)")
    v, a = embed_video(scorer, crops, np.arange(n)), embed_audio(scorer, mel)
    dist, used = offset_distances(v, a, valid, max_offset)
    if used < min_frames:
        raise SyncScoreError(f"only {used} frames show a mouth and have audio at every offset (need {min_frames})")
    best = int(dist.argmin())
    return SyncScore(lse_c=float(np.median(dist) - dist[best]), lse_d=float(dist[best]), offset=best - max_offset,
                     frames=used, distances=[float(x) for x in dist])


def stretch_sync_score(scorer: SyncScorer, crops: np.ndarray, valid: np.ndarray, mel: np.ndarray,
                       audio_rows: np.ndarray, audio_valid: np.ndarray, max_offset: int = MAX_OFFSET,
                       min_frames: int = 5, frame_clip: np.ndarray | None = None,
                       audio_clip: np.ndarray | None = None) -> SyncScore:
    """The score of a short stretch of frames (e.g. an avatar's held-out frames) inside a longer audio track.

    Frame t's visual window is scored against the audio rows ``audio_rows[t] + o``; rows outside the track or not
    ``audio_valid`` are skipped, so each offset's mean runs over the frames that have audio there (the published
    protocol pads with zeros instead, which on unit codes would favour the far offsets). ``frames`` is the fewest
    frames any offset was averaged over.

    Args:
        crops: uint8 [T, h, w] mouth crops of the stretch (its 5-frame windows repeat the edge frames).
        valid: bool [T] frames with a mouth.
        mel: [A, 16, 80] the track's audio windows.
        audio_rows: int [T] the row of ``mel`` under each frame.
        audio_valid: bool [A].
        frame_clip, audio_clip: the clip of each frame and audio row: a frame is never scored against another
            clip's audio (an identity's timeline joins its clips end to end).

    Raises:
        SyncScoreError: some offset has fewer than ``min_frames`` frames.
    """
    t = np.flatnonzero(valid)
    if len(t) < min_frames:
        raise SyncScoreError(f"only {len(t)} frames show a mouth (need {min_frames})")
    v = embed_video(scorer, crops, t)
    lo = max(0, int(audio_rows[t].min()) - max_offset)
    hi = min(len(mel), int(audio_rows[t].max()) + max_offset + 1)
    a = embed_audio(scorer, mel[lo:hi])
    dist, counts = [], []
    for o in range(-max_offset, max_offset + 1):
        rows = audio_rows[t] + o
        ok = (rows >= lo) & (rows < hi)
        ok[ok] &= audio_valid[rows[ok]]
        if frame_clip is not None and audio_clip is not None:
            ok[ok] &= audio_clip[rows[ok]] == frame_clip[t[ok]]
        counts.append(int(ok.sum()))
        if not ok.any():
            dist.append(float("inf"))
            continue
        dist.append(torch.linalg.vector_norm(v[torch.from_numpy(np.flatnonzero(ok))]
                                             - a[torch.from_numpy(rows[ok] - lo)], dim=1).mean().item())
    if min(counts) < min_frames:
        raise SyncScoreError(f"some offsets have audio under only {min(counts)} of {len(t)} frames (need "
                             f"{min_frames}): the stretch lies too close to the end of its audio")
    d = np.asarray(dist)
    best = int(d.argmin())
    return SyncScore(lse_c=float(np.median(d) - d[best]), lse_d=float(d[best]), offset=best - max_offset,
                     frames=min(counts), distances=[float(x) for x in d])


@torch.no_grad()
def retrieval_top1(lae: LandmarkAE, encoder: AudioLipEncoder, canonical: np.ndarray, mel: np.ndarray,
                   spans: np.ndarray, candidates: int = 32, min_gap: int = 3, seed: int = 0) -> float:
    """Share of frames whose mouth code picks its own audio window among ``candidates`` windows of the same clip
    (the others at least ``min_gap`` frames away); chance is 1/candidates."""
    lae.eval()
    encoder.eval()
    rng = np.random.default_rng(seed)
    hits = total = 0
    for s, e in spans:
        if e - s < candidates + 2 * min_gap:
            continue
        _, m = lae.encode(torch.from_numpy(canonical[s:e]))
        au = encoder(torch.from_numpy(mel[s:e]))
        m, au = torch.nn.functional.normalize(m, dim=1), torch.nn.functional.normalize(au, dim=1)
        for i in range(e - s):
            far = np.flatnonzero(np.abs(np.arange(e - s) - i) >= min_gap)
            pick = np.concatenate([[i], rng.choice(far, candidates - 1, replace=False)])
            hits += int((au[pick] @ m[i]).argmax().item() == 0)
            total += 1
    return hits / max(total, 1)


@torch.no_grad()
def swap_error(lae: LandmarkAE, canonical: np.ndarray, spans: np.ndarray, valid: np.ndarray, pairs: int = 4096,
               seed: int = 0) -> dict[str, float]:
    """Mean L1 (eye-distance units) of decoding A's eyes-nose code with B's mouth code against A's landmarks with
    B's mouth (``swap_l1``, B another frame of A's clip), and of plain reconstruction (``recon_l1``)."""
    lae.eval()
    rng = np.random.default_rng(seed)
    ia, ib = lae_pairs(spans, valid, pairs, rng)
    a, b = torch.from_numpy(canonical[ia]), torch.from_numpy(canonical[ib])
    fa, ma = lae.encode(a)
    _, mb = lae.encode(b)
    target, _ = swap_targets(a, b, torch.ones(len(a), dtype=torch.bool))
    return {"swap_l1": float((lae.decode(fa, mb) - target).abs().mean()),
            "recon_l1": float((lae.decode(fa, ma) - a).abs().mean())}


def offset_accuracy(scorer: SyncScorer, crops: np.ndarray, mel: np.ndarray, valid: np.ndarray, spans: np.ndarray,
                    shift: int = 0, tolerance: int = 1) -> tuple[float, float, int]:
    """Over clips (row spans): the share whose detected offset is ``shift`` +- ``tolerance`` when the audio is
    delayed by ``shift`` frames, the mean LSE-C, and how many clips could be scored."""
    hits, confs = [], []
    for s, e in spans:
        idx = np.arange(s, e)
        audio = np.clip(idx - shift, s, e - 1)  # frame t hears what was said at t - shift
        try:
            r = sync_score(scorer, crops[idx], mel[audio], valid[idx] & valid[audio])
        except SyncScoreError:
            continue
        hits.append(abs(r.offset - shift) <= tolerance)
        confs.append(r.lse_c)
    return (float(np.mean(hits)) if hits else float("nan"), float(np.mean(confs)) if confs else float("nan"),
            len(hits))
