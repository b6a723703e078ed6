"""Who speaks when in a clip with several people: audio-visual active-speaker detection.

Per frame, one of the visible people or nobody speaks. Three cues, none needing downloaded weights:

1. **voice activity**: Silero VAD (MIT; its model ships inside the ``silero-vad`` wheel) gives P(speech) per frame;
2. **audio-visual correspondence**: each person's lip aperture (lip gaps over the inter-ocular distance, so face
   size and distance cancel) against the audio's loudness, Pearson-correlated in sliding windows at the person's
   own audio-visual lag (searched over the clip within +-``max_lag`` frames: sources are often a few frames out of
   sync). A mouth that moves while someone else's voice is heard does not follow that voice's loudness;
3. **voice consistency**: per person, a diagonal Gaussian of the frames' MFCCs, MAP-adapted from the clip's voiced
   frames towards the frames currently given to that person, so all of one person's speech supports each of its
   frames (EM: the decoding is repeated as the voice models are refitted).

A hidden Markov model with sticky transitions over the states nobody / person k combines them; forward-backward
gives each frame's posterior (its confidence), and runs shorter than ``min_segment_s`` are merged into their
neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.voices import loudness_and_mfcc, voice_clusters, voice_posteriors

NOBODY = -1
"""The speaker index of frames where nobody speaks."""
STILL_FRACTION = 0.35
"""Lips moving under this fraction of another person's (and under ``min_activity``) count as still."""


@dataclass(frozen=True)
class SpeakerConfig:
    """Settings of the active-speaker detector (defaults tuned on constructed conversations of the shared corpus)."""

    window_s: float = 1.0
    """Sliding window of the audio-visual correlation (s)."""
    max_lag: int = 3
    """Largest audio-visual offset searched per person (frames; 0.12 s at 25 fps). Wider searches find chance
    correlations with the other person's voice more often than they find a real offset (measured)."""
    av_weight: float = 0.5
    """Log-likelihood per unit of windowed correlation."""
    voice_weight: float = 0.3
    """Log-likelihood per unit of the voice models' log-likelihood ratio (per MFCC dimension)."""
    voice_relevance: float = 10.0
    """MAP relevance of the clip-wide voice model (frames): a person with less speech stays near it."""
    iterations: int = 3
    """Voice-model refits (EM steps) after the first decoding. (Matching voices to people again on the refined
    segmentation did worse on the constructed conversations: 0.85 vs 0.88 mean frame accuracy.)"""
    switch_s: float = 4.0
    """Expected time between speaker changes (s): sets the HMM's stay probability."""
    min_segment_s: float = 0.5
    """Shortest turn of one person kept (s); a shorter one joins a neighbour."""
    min_silence_s: float = 1.0
    """Shortest silence between or inside turns kept (s): roles are turn-level, so a shorter pause stays with the
    turn around it (as diarization tools and the DialogueNeRF data treat it)."""
    voice_chunk_s: float = 1.0
    """Chunks whose mean MFCCs are clustered into voices (s)."""
    still_penalty: float = 2.0
    """Log-likelihood taken per frame from a person whose lips are still while another person's move."""
    min_activity: float = 0.02
    """Lip activity (:func:`lip_activity`) under which a person cannot own a voice when another person's lips move
    over three times as much meanwhile (:data:`STILL_FRACTION`)."""
    n_mfcc: int = 19
    """MFCCs (c1..c19 of the log-mel) in the voice models."""


@dataclass
class SpeakerTrack:
    """The detector's output for one clip of N frames and K people."""

    speaker: np.ndarray
    """int [N]: index of the person speaking, :data:`NOBODY` when nobody does."""
    confidence: np.ndarray
    """float32 [N]: posterior probability of the decision (0.5-1 where it is sure)."""
    posterior: np.ndarray
    """float32 [N, K + 1]: P(nobody), P(person 0), ..."""
    evidence: np.ndarray
    """float32 [K, N]: windowed audio-visual correlation per person (NaN where the face is missing)."""
    aperture: np.ndarray
    """float32 [K, N]: each person's lip aperture (NaN where the face is missing), for QC."""
    loudness: np.ndarray
    """float32 [N]: the audio envelope the mouths are compared against."""
    voice: np.ndarray
    """float32 [N]: P(speech) per frame."""
    lags: list[int]
    """Per person, the audio-visual lag used (frames; positive: the mouth leads the sound)."""

    def speaking(self, person: int) -> np.ndarray:
        """bool [N]: frames where ``person`` speaks."""
        return self.speaker == person

    def roles(self, person: int) -> np.ndarray:
        """object [N] of ``speaker`` / ``listener`` / ``silent`` for one person."""
        out = np.where(self.speaker == person, "speaker", "listener").astype(object)
        out[self.speaker == NOBODY] = "silent"
        return out


@dataclass(frozen=True)
class RoleOverride:
    """Who speaks in a stretch of a clip, checked by hand: it replaces the detector's decision there."""

    start_s: float
    end_s: float
    speaker: str | None
    """A person of the clip by name (as in the dataset, e.g. ``anchor`` or ``call_p1``), ``p<k>`` (k-th from the
    left), or None / ``none`` for nobody."""


def override_frames(override: RoleOverride, names: list[str], fps: float) -> tuple[int, int, int]:
    """An override as frames [start, end) and the index of its speaker (:data:`NOBODY` for nobody).

    Raises:
        ValueError: it names nobody of the clip, or its range is empty.
    """
    o = override
    if not o.end_s > o.start_s >= 0:
        raise ValueError(f"role override {o.start_s}-{o.end_s} s: the range is empty or negative")
    if o.speaker in (None, "", "none"):
        who = NOBODY
    elif o.speaker in names:
        who = names.index(o.speaker)
    elif o.speaker.startswith("p") and o.speaker[1:].isdigit() and int(o.speaker[1:]) < len(names):
        who = int(o.speaker[1:])
    else:
        raise ValueError(f"role override {o.start_s}-{o.end_s} s names {o.speaker!r}, who is not in this clip "
                         f"(people: {', '.join(names)}; or p0..p{len(names) - 1}, or none)")
    return int(np.ceil(o.start_s * fps - 1e-6)), int(np.ceil(o.end_s * fps - 1e-6)), who


def apply_overrides(track: SpeakerTrack, overrides: list[RoleOverride], names: list[str],
                    fps: float) -> SpeakerTrack:
    """The track with each override's frames [start_s, end_s) given to its speaker at confidence 1.

    Raises:
        ValueError: an override names nobody of the clip, or its range is empty.
    """
    for o in overrides:
        a, b, who = override_frames(o, names, fps)
        track.speaker[a:b] = who
        track.confidence[a:b] = 1.0
    return track


def lip_aperture(lms: np.ndarray) -> np.ndarray:
    """Mouth opening from 68-point landmarks, in inter-ocular distances: [..., 68, 2] -> [...].

    The mean of the inner-lip gaps (61-67, 62-66, 63-65) and the outer-lip gap (51-57), divided by the distance of
    the outer eye corners (36-45), so it does not depend on face size or distance to the camera.
    """
    gaps = [np.linalg.norm(lms[..., a, :] - lms[..., b, :], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))]
    inner = sum(gaps) / 3.0
    outer = np.linalg.norm(lms[..., 51, :] - lms[..., 57, :], axis=-1)
    iod = np.linalg.norm(lms[..., 36, :] - lms[..., 45, :], axis=-1)
    return ((inner + outer) / 2.0 / np.maximum(iod, 1e-6)).astype(np.float32)


def lip_activity(aperture: np.ndarray, width: int) -> float:
    """How much lips move: the median over ``width``-frame windows of the lip aperture's standard deviation
    (inter-ocular distances; NaN frames left out). Talking lips measure 0.015-0.04 on the shared corpus (5th
    percentile of clips 0.019), a listener's closed smile under 0.01."""
    stds = [w[np.isfinite(w)].std() for w in (aperture[s : s + width] for s in range(0, max(len(aperture) - width, 1),
                                                                                    max(width // 2, 1)))
            if np.isfinite(w).sum() >= width // 2]
    return float(np.median(stds)) if stds else 0.0


def local_activity(aperture: np.ndarray, width: int) -> np.ndarray:
    """Per frame, the standard deviation of the lip aperture in a centred ``width``-frame window (NaN frames left
    out; NaN where under half the window has a face): [N] -> [N]."""
    ok = np.isfinite(aperture)
    x = np.where(ok, aperture, 0.0)
    k = np.ones(width)
    n = np.convolve(ok.astype(float), k, "same")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.convolve(x, k, "same") / n
        var = np.convolve(x * x, k, "same") / n - mean**2
    out = np.sqrt(np.maximum(var, 0.0))
    out[n < width / 2] = np.nan
    return out


def best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Highest Pearson correlation of two series [N] over lags in [-max_lag, max_lag], and its lag.

    A positive lag pairs ``a[t + lag]`` with ``b[t]``. NaNs in either series are left out.
    """
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(lag, 0) : len(a) + min(lag, 0)]
        y = b[max(-lag, 0) : len(b) + min(-lag, 0)]
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) > 2 and x.std() > 0 and y.std() > 0:
            best = max(best, (float(np.corrcoef(x, y)[0, 1]), lag))
    return best


def _shift(x: np.ndarray, lag: int) -> np.ndarray:
    """``x[t + lag]`` (NaN past the ends)."""
    out = np.full_like(x, np.nan)
    if lag >= 0:
        out[: len(x) - lag] = x[lag:]
    else:
        out[-lag:] = x[: len(x) + lag]
    return out


def windowed_correlation(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` in a centred window of ``width`` frames at every frame [N].

    Frames where ``a`` is NaN are left out of the windows; a window with under half its frames gives NaN.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    x, y = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    k = np.ones(width)

    def box(v):
        return np.convolve(v, k, "same")

    n = box(ok.astype(float))
    sx, sy = box(x), box(y)
    sxx, syy, sxy = box(x * x), box(y * y), box(x * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        r = cov / np.sqrt(np.maximum(vx, 0) * np.maximum(vy, 0))
    r[(n < width / 2) | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1, 1)


def _forward_backward(log_em: np.ndarray, stay: float) -> np.ndarray:
    """Posteriors [N, S] of a sticky HMM (uniform start; leave a state with ``1 - stay``, split evenly)."""
    n, s = log_em.shape
    trans = np.full((s, s), (1.0 - stay) / max(s - 1, 1))
    np.fill_diagonal(trans, stay)
    em = np.exp(log_em - log_em.max(1, keepdims=True))
    alpha = np.zeros((n, s))
    a = np.full(s, 1.0 / s) * em[0]
    alpha[0] = a / a.sum()
    for t in range(1, n):
        a = (alpha[t - 1] @ trans) * em[t]
        alpha[t] = a / a.sum()
    beta = np.ones((n, s))
    for t in range(n - 2, -1, -1):
        b = trans @ (em[t + 1] * beta[t + 1])
        beta[t] = b / b.sum()
    post = alpha * beta
    return post / post.sum(1, keepdims=True)


def _merge_short_runs(states: np.ndarray, post: np.ndarray, min_len: np.ndarray) -> np.ndarray:
    """Give each run shorter than its state's ``min_len`` to the neighbouring run whose state it finds more likely
    (shortest runs first)."""
    states = states.copy()
    for _ in range(len(states)):
        edges = np.flatnonzero(np.diff(states)) + 1
        starts, ends = np.r_[0, edges], np.r_[edges, len(states)]
        short = [(s, e) for s, e in zip(starts, ends, strict=True)
                 if e - s < min_len[states[s]] and len(starts) > 1
                 and not (states[s] == 0 and (s == 0 or e == len(states)))]  # silence before/after all speech stays
        if not short:
            break
        s, e = min(short, key=lambda r: r[1] - r[0])
        options = [states[s - 1]] if s > 0 else []
        options += [states[e]] if e < len(states) else []
        states[s:e] = max(options, key=lambda k: post[s:e, k].sum())
    return states


def detect_speakers(
    landmarks: np.ndarray, mel: np.ndarray, voice: np.ndarray, fps: float = 25.0,
    config: SpeakerConfig | None = None,
) -> SpeakerTrack:
    """Decide per frame which person (or nobody) speaks.

    Args:
        landmarks: float [K, N, 68, 2] each person's landmarks in any pixel units, NaN where the face is missing.
        mel: float [N, window, n_mels] the frames' log-mel windows (``workers.audio.frame_features``).
        voice: float [N] P(speech) per frame (:class:`VoiceActivity`; 0 where there is no audio).
        fps: frame rate.
        config: detector settings.

    Returns:
        The clip's :class:`SpeakerTrack`.
    """
    cfg = config or SpeakerConfig()
    k_people, n = landmarks.shape[:2]
    aperture = lip_aperture(landmarks)  # [K, N], NaN where missing
    loud, mfcc = loudness_and_mfcc(mel, cfg.n_mfcc)
    voice = np.clip(np.asarray(voice, np.float64), 0.0, 1.0)
    voiced = voice > 0.5
    loud_v = np.where(voice > 0.05, loud, np.nan)  # correlate inside speech (and its edges) only

    width = max(int(round(cfg.window_s * fps)), 5)
    v = np.clip(voice, 0.02, 0.98)
    stay = 1.0 - 1.0 / max(cfg.switch_s * fps, 2.0)
    enough = voiced.sum() >= 2 * width
    m = (mfcc - mfcc[voiced].mean(0)) / (mfcc[voiced].std(0) + 1e-6) if enough else mfcc
    chunk = max(int(round(cfg.voice_chunk_s * fps)), 2)
    labels = voice_clusters(m, voiced, chunk, k_people) if enough else np.where(voiced, 0, -1)
    owner, lags = _assign_voices(labels, aperture, loud_v, cfg.max_lag, cfg.min_activity, width)
    evidence = np.stack([windowed_correlation(_shift(aperture[k], lags[k]), loud_v, width)
                         for k in range(k_people)]).astype(np.float32)
    av = cfg.av_weight * np.nan_to_num(evidence.T, nan=0.0)  # [N, K]
    # Lips that hardly move while another person's move (over three times as much) do not speak there.
    act = np.stack([local_activity(aperture[k], width) for k in range(k_people)]).T  # [N, K]
    top = np.nanmax(np.nan_to_num(act, nan=0.0), 1, keepdims=True)
    av -= cfg.still_penalty * ((act < cfg.min_activity) & (act < STILL_FRACTION * top))
    post = _forward_backward(_emissions(v, av), stay)
    if enough:  # EM: voice models from the frames given to each person, then decode again
        weights = np.zeros((n, k_people))
        for c, k in owner.items():
            weights[:, k] += (labels == c) & voiced
        for _ in range(cfg.iterations + 1):
            voice_ll = voice_posteriors(m, voiced, weights, cfg.voice_relevance)
            post = _forward_backward(_emissions(v, av + cfg.voice_weight * voice_ll), stay)
            weights = post[:, 1:]

    min_len = np.full(k_people + 1, max(int(round(cfg.min_segment_s * fps)), 1))
    min_len[0] = max(int(round(cfg.min_silence_s * fps)), 1)
    best = post.argmax(1)
    states = _merge_short_runs(best, post, min_len)
    confidence = post[np.arange(n), states]
    # A pause kept inside a turn is that person's turn whether or not they are voicing: P(them) + P(nobody).
    paused = (best == 0) & (states > 0)
    confidence[paused] += post[paused, 0]
    return SpeakerTrack(
        speaker=(states - 1).astype(np.int64), confidence=confidence.astype(np.float32),
        posterior=post.astype(np.float32), evidence=evidence, aperture=aperture.astype(np.float32),
        loudness=loud.astype(np.float32), voice=voice.astype(np.float32), lags=lags,
    )


def _emissions(voice: np.ndarray, person_ll: np.ndarray) -> np.ndarray:
    """Log-emissions [N, K + 1]: nobody from 1 - P(speech), person k from P(speech) and its own evidence."""
    return np.concatenate([np.log1p(-voice)[:, None], np.log(voice)[:, None] + person_ll], 1)


def _assign_voices(labels: np.ndarray, aperture: np.ndarray, loudness: np.ndarray, max_lag: int,
                   min_activity: float, width: int) -> tuple[dict[int, int], list[int]]:
    """Voice cluster -> person, and each person's audio-visual lag.

    For every person and voice, the best-lag correlation of the person's lip aperture with the loudness over that
    voice's frames only (so another voice does not dilute it); the one-to-one matching with the most correlation
    wins (a person whose mouth follows a voice's loudness owns that voice). Lips that hardly move while a voice is
    heard (:attr:`SpeakerConfig.min_activity`, :func:`lip_activity`) cannot own it: it goes to the best-fitting
    moving mouth, which then owns several clusters (one voice that the clustering split, the other person
    listening).
    A person left without a voice gets the lag that fits all the speech.
    """
    from scipy.optimize import linear_sum_assignment

    clusters = sorted(int(c) for c in np.unique(labels) if c >= 0)
    k_people = len(aperture)
    score = np.zeros((k_people, len(clusters)))
    lag = np.zeros((k_people, len(clusters)), np.int64)
    for j, c in enumerate(clusters):
        loud_c = np.where(labels == c, loudness, np.nan)
        act = np.array([lip_activity(aperture[k][labels == c], width) for k in range(k_people)])
        for k in range(k_people):
            score[k, j], lag[k, j] = best_lag_correlation(aperture[k], loud_c, max_lag)
            if act[k] < min_activity and act[k] < STILL_FRACTION * act.max():  # lips that hardly move do not speak
                score[k, j] = -1.0
    if not clusters:
        return {}, [best_lag_correlation(aperture[k], loudness, max_lag)[1] for k in range(k_people)]
    people, picked = linear_sum_assignment(-score)
    # (cluster column, person); a voice matched to still lips goes to the best-fitting moving mouth instead
    pairs = [(j, int(k) if score[k, j] > -1 else int(score[:, j].argmax())) for k, j in zip(people, picked,
                                                                                           strict=True)]
    owner = {clusters[j]: int(k) for j, k in pairs}
    lags = [best_lag_correlation(aperture[k], loudness, max_lag)[1] for k in range(k_people)]
    for j, k in sorted(pairs, key=lambda p: score[p[1], p[0]]):  # a person's best-fitting voice sets its lag
        lags[k] = int(lag[k, j])
    return owner, lags
