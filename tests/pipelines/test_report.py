"""Per-identity QC report: figures on synthetic series with known answers, and a report of real clips."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipelines import dataset as D
from pipelines import report as R
from pipelines.commit import write_clip
from pipelines.schema import FRAME_SCHEMA
from pipelines.storage import Storage
from tests.conftest import CLIPS

FPS = 25.0


def _table(clips: dict[str, dict[str, np.ndarray]], identity: str = "syn") -> pa.Table:
    """A ``frames/`` table of synthetic clips: {clip_id: {"lms": [N, 68, 2] (NaN rows: no face), "eye": [N],
    "speaking": [N] (optional), "err": [N] (optional)}}."""
    cols: dict[str, list] = {c: [] for c in R.LIGHT_COLUMNS}
    for cid, c in clips.items():
        lms = c["lms"]
        n = len(lms)
        for i in range(n):
            face = bool(np.isfinite(lms[i]).all())
            cols["identity"].append(identity)
            cols["clip_id"].append(cid)
            cols["frame_index"].append(i)
            cols["time_s"].append(i / FPS)
            cols["face_found"].append(face)
            cols["landmarks_2d"].append(lms[i].reshape(-1).tolist() if face else None)
            cols["eye_ratio"].append(float(c["eye"][i]) if face else None)
            cols["speaking"].append(bool(c["speaking"][i]) if "speaking" in c else None)
            cols["audio_valid"].append(True)
            cols["reprojection_error"].append(float(c["err"][i]) if face and "err" in c else (2.0 if face else None))
    schema = pa.schema([FRAME_SCHEMA.field(c) for c in R.LIGHT_COLUMNS])
    return pa.Table.from_pydict(cols, schema=schema)


def _static(n: int, rng: np.random.Generator, sigma: float = 0.0) -> np.ndarray:
    base = rng.uniform(100, 400, (68, 2))
    return base[None] + rng.normal(0, sigma, (n, 68, 2)) if sigma else np.repeat(base[None], n, 0)


def _dips(n: int, centres: list[int], width: int = 3, depth: float = 0.15, level: float = 0.3) -> np.ndarray:
    """An eye-ratio series at ``level`` with V-shaped closures to ``depth`` x level at ``centres``."""
    eye = np.full(n, level)
    for c in centres:
        for k in range(-width, width + 1):
            if 0 <= c + k < n:
                eye[c + k] = min(eye[c + k], level * (depth + (1 - depth) * abs(k) / (width + 1)))
    return eye


# blinks ----------------------------------------------------------------------------------------------


def test_count_blinks_on_synthetic_series():
    """Three dips count three; noise alone counts none; one long noisy closure counts one."""
    rng = np.random.default_rng(0)
    n = 200
    assert R.count_blinks(_dips(n, [30, 90, 150])) == 3
    assert R.count_blinks(_dips(n, [30, 90, 150]) + rng.normal(0, 0.01, n)) == 3
    assert R.count_blinks(0.3 + rng.normal(0, 0.01, n)) == 0
    long = np.full(n, 0.3) + rng.normal(0, 0.01, n)
    long[60:120] = 0.05 + rng.normal(0, 0.02, 60)  # eyes shut 2.4 s, noisy, never near "open"
    assert R.count_blinks(long) == 1
    # A closure that partly reopens (to 65% of open) and closes again is one blink; a reopening to 90% makes two.
    wobble = np.full(40, 0.3)
    wobble[10:13], wobble[13:16], wobble[16:19] = 0.05, 0.3 * 0.65, 0.05
    assert R.count_blinks(wobble) == 1
    wobble[13:16] = 0.3 * 0.9
    assert R.count_blinks(wobble) == 2
    # Frames without a face (NaN) hold the state: a closure across a detection gap counts once.
    gap = _dips(60, [30], width=4)
    gap[29:32] = np.nan
    assert R.count_blinks(gap) == 1
    assert R.count_blinks(np.full(10, np.nan)) == 0


def test_blinks_are_counted_per_clip_never_across_clips():
    """Each clip is normalised by its own median, and a closure split by a clip boundary counts in each clip."""
    rng = np.random.default_rng(1)
    n = 100
    lms = _static(n, rng, 0.5)
    # Clip a: wide eyes (0.35) with three blinks; clip b: a narrower-eyed crop (0.18) with two. Pooled, the
    # common median is a's, clip b sits below 0.6 x it the whole time and its two blinks merge into one
    # phantom closure.
    a = _dips(2 * n, [40, 120, 160], level=0.35)
    b = _dips(n, [30, 70], level=0.18)
    figs = R.identity_figures(_table({"a": {"lms": _static(2 * n, rng, 0.5), "eye": a}, "b": {"lms": lms, "eye": b}}),
                              fps=FPS)
    assert figs["blink_count"] == 5
    assert R.count_blinks(np.concatenate([a, b])) == 4  # what pooling the clips would have said
    # A closure at the end of clip c continuing at the start of clip d: one event in each clip.
    c = np.full(n, 0.3)
    c[-4:] = 0.05
    d = np.full(n, 0.3)
    d[:4] = 0.05
    assert R.count_blinks(np.concatenate([c, d])) == 1
    figs = R.identity_figures(_table({"c": {"lms": lms, "eye": c}, "d": {"lms": lms, "eye": d}}), fps=FPS)
    assert figs["blink_count"] == 2
    assert figs["blinks_per_minute"] == pytest.approx(2 / (2 * n / FPS / 60))


# jitter ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.5, 4.0])
def test_jitter_of_static_landmarks_with_noise_estimates_sigma(sigma):
    """Static landmarks + white noise of per-coordinate sigma: the jitter figure is sigma within 5%."""
    rng = np.random.default_rng(2)
    lms = _static(300, rng, sigma)
    figs = R.identity_figures(_table({"a": {"lms": lms, "eye": np.full(300, 0.3)}}), fps=FPS)
    assert figs["landmark_jitter_px"] == pytest.approx(sigma, rel=0.05)


def test_jitter_of_smooth_motion_is_zero_and_clip_boundaries_are_not_differenced():
    """Constant-velocity drift plus a slow sway gives ~0 jitter; a jump between two clips adds nothing."""
    rng = np.random.default_rng(3)
    n = 250
    t = np.arange(n)[:, None, None]
    base = _static(1, rng)[0]
    smooth = base[None] + np.stack([0.8 * t[..., 0], 20 * np.sin(2 * np.pi * t[..., 0] / 100)], -1)
    other = base[None] + 150.0 + 0 * t  # a second clip far away: a boundary jump of ~150 px
    figs = R.identity_figures(_table({"a": {"lms": smooth, "eye": np.full(n, 0.3)},
                                      "b": {"lms": other, "eye": np.full(n, 0.3)}}), fps=FPS)
    assert figs["landmark_jitter_px"] < 0.05
    # Frames without a face break the triples: a face lost and re-found elsewhere is not differenced either.
    gappy = smooth.copy()
    gappy[100:103] = np.nan
    gappy[103:] += 80.0
    figs = R.identity_figures(_table({"a": {"lms": gappy, "eye": np.full(n, 0.3)}}), fps=FPS)
    assert figs["landmark_jitter_px"] < 0.05
    assert figs["face_detection_rate"] == pytest.approx((n - 3) / n)


# other figures ---------------------------------------------------------------------------------------


def test_figures_of_synthetic_identity():
    """Speech seconds, duration, reprojection median and detection rate on a table with known answers."""
    rng = np.random.default_rng(4)
    n = 100
    lms = _static(n, rng, 1.0)
    lms[::10] = np.nan  # 10 frames without a face
    speaking = np.zeros(n, bool)
    speaking[20:57] = True  # 37 frames
    err = np.arange(n, dtype=float)
    figs = R.identity_figures(_table({"x": {"lms": lms, "eye": np.full(n, 0.3), "speaking": speaking, "err": err},
                                      "y": {"lms": _static(50, rng, 1.0), "eye": np.full(50, 0.3)}}), fps=FPS)
    assert list(figs) == R.FIGURE_COLUMNS
    assert figs["identity"] == "syn" and figs["n_clips"] == 2 and figs["n_rows"] == 150
    assert figs["face_detection_rate"] == pytest.approx(140 / 150)
    assert figs["speech_s"] == pytest.approx(37 / FPS)  # clip y's speaking is null: not speech
    assert figs["duration_s"] == pytest.approx(150 / FPS)
    # Face frames of x have errors 1..99 without the multiples of 10; y's are 2.0 each.
    expected = np.median(np.concatenate([[e for e in err if e % 10], np.full(50, 2.0)]))
    assert figs["reprojection_error_px"] == pytest.approx(expected)
    assert figs["blink_count"] == 0 and figs["blinks_per_minute"] == 0.0


def test_figures_without_any_face_are_none():
    lms = np.full((20, 68, 2), np.nan)
    figs = R.identity_figures(_table({"a": {"lms": lms, "eye": np.zeros(20)}}), fps=FPS)
    assert figs["face_detection_rate"] == 0.0
    assert figs["landmark_jitter_px"] is None and figs["reprojection_error_px"] is None
    assert figs["blinks_per_minute"] is None and figs["blink_count"] == 0


def test_spread_picks_covers_every_clip():
    assert R.spread_picks([50, 50], 12) == [[4, 12, 20, 29, 37, 45]] * 2
    picks = R.spread_picks([1000, 3, 2], 12)
    assert [len(p) for p in picks] == [10, 1, 1] and all(p == sorted(set(p)) for p in picks)
    assert [len(p) for p in R.spread_picks([5, 5, 5, 5, 5], 2)] == [1, 0, 0, 0, 1]
    assert sum(len(p) for p in R.spread_picks([2, 1], 12)) == 3  # fewer frames than asked: all of them
    assert R.spread_picks([], 12) == [] and R.spread_picks([0, 4], 2) == [[], [1, 3]]


# real clips ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> D.Dataset:
    """Two real clips (50 frames each) of identity ``alice`` and one (20 frames) of ``bob``."""
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for

    st = Storage(tmp_path_factory.mktemp("report"))
    p = ClipProcessor(ClipConfig(max_frames=50))
    try:
        for src, who in zip(CLIPS, ["alice", "alice", "bob"], strict=True):
            if who == "bob":
                p.config = replace(p.config, max_frames=20)
            r = p(str(src), identity=who, clip_id=clip_id_for(str(src)))
            write_clip(st, r, identity=who)
    finally:
        p.close()
    return D.Dataset(st)


def test_real_figures(real):
    """Real talking-head clips: every frame has a face, landmarks are steady, the fit is tight, blinks seen."""
    light = real.frames("alice", columns=R.LIGHT_COLUMNS)
    figs = R.identity_figures(light, fps=R.frame_rate(light))
    assert figs["n_clips"] == 2 and figs["n_rows"] == 100 and figs["fps"] == 25.0
    assert figs["face_detection_rate"] == 1.0
    assert 0.05 < figs["landmark_jitter_px"] < 2.0  # px in the 512-px crop
    assert 1.0 < figs["reprojection_error_px"] < 10.0
    assert 2 <= figs["blink_count"] <= 8  # the two clips hold 4 visible blinks in 4 s
    speaking = sum(bool(s) for s in light.column("speaking").to_pylist())
    assert 0 < figs["speech_s"] == pytest.approx(speaking / 25.0)


def test_identity_report_sheet(real):
    sheet, figs = R.identity_report(real, "alice", n=12)
    assert sheet.shape == (R.TITLE_HEIGHT + 3 * 256, 4 * 256, 3) and sheet.dtype == np.uint8
    assert figs["identity"] == "alice"
    assert sheet[: R.TITLE_HEIGHT].max() == 255  # the title text is drawn
    assert sheet[R.TITLE_HEIGHT :].std() > 20
    small, _ = R.identity_report(real, "bob", n=3, cols=4, tile=128)
    assert small.shape == (R.TITLE_HEIGHT + 128, 4 * 128, 3)


def test_write_identity_report_and_quality_table_round_trip(real):
    figures = R.write_reports(real)
    assert [f["identity"] for f in figures] == ["alice", "bob"]
    st = real.storage
    for f in figures:
        png = cv2.imdecode(np.frombuffer(st.read_bytes(f"qc/{f['identity']}.png"), np.uint8), cv2.IMREAD_COLOR)
        assert png is not None and png.shape == (R.TITLE_HEIGHT + 3 * 256, 1024, 3)
        assert json.loads(st.read_bytes(f"qc/{f['identity']}.json")) == f
    text = st.read_bytes("qc/quality.csv").decode()
    lines = text.splitlines()
    assert lines[0] == ",".join(R.FIGURE_COLUMNS) and len(lines) == 3
    assert all(len(v.split(".")[-1]) <= 3 for v in lines[1].split(",") if "." in v)  # rounded, readable
    back = R.read_quality_table(real)
    for f, b in zip(figures, back, strict=True):
        assert list(b) == R.FIGURE_COLUMNS
        for k in R.FIGURE_COLUMNS:
            if isinstance(f[k], float):
                assert math.isclose(b[k], f[k], abs_tol=5e-4)
            else:
                assert b[k] == f[k]


def test_unknown_identity_raises_naming_it(real):
    with pytest.raises(KeyError, match="carol"):
        R.identity_report(real, "carol")
    with pytest.raises(KeyError, match="carol"):
        R.write_identity_report(real, "carol")
    assert not real.storage.exists("qc/carol.png")
