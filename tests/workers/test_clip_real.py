"""The per-clip worker on the real shared clips: every per-frame feature, checked for sense."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.qc import best_lag_correlation
from pipelines.schema import FRAME_SHAPES, array, frames_table
from tests.conftest import CLIPS, CONVERSATION
from workers.parsing import BACKGROUND, HEAD, NECK, TORSO, decode_png

STEMS = [p.stem for p in CLIPS]


def _smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="same")


def test_three_shared_clips_exist():
    """The shared data holds the three talking-head clips these tests use."""
    assert len(CLIPS) == 3


@pytest.mark.parametrize("stem", STEMS)
def test_rows_and_faces(processed, stem):
    """200 rows at 25 fps, one person, a face in (nearly) every frame."""
    res = processed[stem]
    assert res.summary["n_frames"] == 200 and len(res.rows) == 200
    assert res.summary["n_people"] == 1
    assert [r["frame_index"] for r in res.rows] == list(range(200))
    assert np.allclose(np.diff([r["time_s"] for r in res.rows]), 0.04)
    found = np.mean([r["face_found"] for r in res.rows])
    assert found >= 0.98


@pytest.mark.parametrize("stem", STEMS)
def test_landmarks_inside_face_rect(processed, stem):
    """All 68 landmarks lie inside the face rectangle, which lies inside the crop."""
    for r in processed[stem].rows:
        if not r["face_found"]:
            continue
        lms = array(r, "landmarks_2d")
        x0, y0, x1, y1 = array(r, "face_rect")
        assert 0 <= x0 < x1 <= r["image_size"] and 0 <= y0 < y1 <= r["image_size"]
        assert (lms[:, 0] >= x0).all() and (lms[:, 0] <= x1).all()
        assert (lms[:, 1] >= y0).all() and (lms[:, 1] <= y1).all()
        lx0, ly0, lx1, ly1 = array(r, "lips_rect")
        assert x0 <= lx0 < lx1 <= x1 and y0 <= ly0 < ly1 <= y1


@pytest.mark.parametrize("stem", STEMS)
def test_pose_reprojects_landmarks(processed, stem):
    """The fitted pose and intrinsics reproject the 68 landmarks within ~2.5% of the face width."""
    rows = [r for r in processed[stem].rows if r["face_found"]]
    err = np.array([r["reprojection_error"] for r in rows])
    face_w = np.median([np.ptp(array(r, "landmarks_2d")[:, 0]) for r in rows])
    assert np.median(err) < 0.025 * face_w, (np.median(err), face_w)
    assert np.percentile(err, 95) < 0.04 * face_w
    for r in rows[::20]:
        c2w = array(r, "pose_c2w")
        R = c2w[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-4) and np.isclose(np.linalg.det(R), 1, atol=1e-4)
        assert np.allclose(c2w[3], [0, 0, 0, 1])
        # The camera sits in front of the face (+z in head coordinates), 0.2-3 m away.
        assert 0.2 < c2w[2, 3] < 3.0
        assert r["focal"] > 0 and 0 <= r["cx"] <= r["image_size"]
    person = processed[stem].people[0]
    assert 0 < person.near < person.far


@pytest.mark.parametrize("stem", STEMS)
def test_mouth_opening_follows_audio(processed, stem):
    """Mouth opening rises and falls with audio RMS (best lag within 0.32 s: real clips drift)."""
    rows = processed[stem].rows
    mouth = _smooth(np.array([r["mouth_opening"] or 0.0 for r in rows]))
    rms = _smooth(np.array([r["rms"] for r in rows]))
    corr, lag = best_lag_correlation(mouth, rms, max_lag=8)
    assert corr > 0.25, (corr, lag)
    # Sanity of the control: the same mouth series against time-reversed audio does not correlate as well.
    corr_rev, _ = best_lag_correlation(mouth, rms[::-1].copy(), max_lag=8)
    assert corr > corr_rev


@pytest.mark.parametrize("stem", STEMS)
def test_eye_ratio_dips_during_blinks(processed, stem):
    """The eye ratio dips well below its median in blinks, agreeing with MediaPipe's blink scores."""
    rows = [r for r in processed[stem].rows if r["face_found"]]
    eye = np.array([r["eye_ratio"] for r in rows])
    blink = np.array([(r["blendshapes"][9] + r["blendshapes"][10]) / 2 for r in rows])
    assert eye.min() < 0.6 * np.median(eye)
    assert np.corrcoef(eye, blink)[0, 1] < -0.7


@pytest.mark.parametrize("stem", STEMS)
def test_parsing_labels(processed, stem):
    """Parsing has head, neck, torso and background; the head label covers the face landmarks and every person
    pixel above the eyes (forehead, hair); hair beside the face above the chin is head; the person below the chin and
    beside the jaw's lower corners is torso."""
    rows = [r for r in processed[stem].rows if r["face_found"]]
    for r in rows[::50]:
        labels = decode_png(r["parsing_png"])
        assert labels.shape == (r["image_size"], r["image_size"])
        present = set(np.unique(labels).tolist())
        assert {HEAD, NECK, TORSO, BACKGROUND} <= present
        lms = array(r, "landmarks_2d").round().astype(int).clip(0, r["image_size"] - 1)
        assert np.mean(labels[lms[:, 1], lms[:, 0]] == HEAD) > 0.9
        person = labels != BACKGROUND
        eye_y = int(lms[36:48, 1].min())
        assert (labels[:eye_y][person[:eye_y]] == HEAD).all()
        chin_y, x_left, x_right = int(lms[0:17, 1].max()), int(lms[3, 0]), int(lms[13, 0])
        beside = person.copy()
        beside[:, x_left - 2 : x_right + 3] = False
        assert (labels[eye_y : chin_y - 1][beside[eye_y : chin_y - 1]] == HEAD).all()
        assert (labels[chin_y + 2 :][beside[chin_y + 2 :]] == TORSO).all()


@pytest.mark.parametrize("stem", STEMS)
def test_background_and_audio_features(processed, stem):
    """A background image per person; audio windows of 16x80 in [0, 1], ZCR and RMS set."""
    import cv2

    res = processed[stem]
    bg = cv2.imdecode(np.frombuffer(res.people[0].background_png, np.uint8), cv2.IMREAD_COLOR)
    assert bg.shape == (512, 512, 3) and bg.std() > 5
    mel = np.stack([array(r, "audio_features") for r in res.rows])
    assert mel.shape == (200, *FRAME_SHAPES["audio_features"])
    assert mel.min() >= 0 and mel.max() <= 1 and mel.std() > 0.05
    assert all(r["audio_valid"] for r in res.rows)
    assert np.mean([r["speaking"] for r in res.rows]) > 0.3


def test_rows_fit_the_parquet_schema(processed):
    """Worker rows convert to the frames/ table with every column of the contract."""
    table = frames_table(processed[STEMS[0]].rows)
    assert table.num_rows == 200
    assert len(table.column("landmarks_2d")[0].as_py()) == 136
    assert table.column("pose_c2w").null_count == sum(not r["face_found"] for r in processed[STEMS[0]].rows)


def test_two_person_clip_tracks_two_people():
    """On the two-person video call, two people are tracked, each with stable ids and own crops."""
    from workers.clip import ClipConfig, ClipProcessor
    from workers.morphable import FitConfig

    p = ClipProcessor(ClipConfig(max_people=2, max_frames=100, crop_size=256, fit=FitConfig(joint_iters=60)))
    try:
        res = p(CONVERSATION, identity="call")
    finally:
        p.close()
    assert res.summary["n_people"] == 2
    assert {s.identity for s in res.people} == {"call_p0", "call_p1"}
    assert res.summary["content_box"] is not None  # the black borders of the call were cut away
    left, right = (np.array(s.crop_box) for s in res.people)
    # Side by side, person 0 on the left: the crops are centred on different people.
    assert (right[0] + right[2]) / 2 - (left[0] + left[2]) / 2 > 0.25 * (right[2] - right[0])
    for k in (0, 1):
        rows = [r for r in res.rows if r["person"] == k]
        assert len(rows) == 100
        assert np.mean([r["face_found"] for r in rows]) > 0.9
