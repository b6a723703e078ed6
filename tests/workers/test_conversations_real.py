"""Who speaks when, on real clips: the hand-labelled video call, constructed conversations with known truth, and
the bad inputs of a conversation (no audio, a person who leaves, three people, names that do not fit).

The video call's labels (``tests/fixtures/video_call_interview.roles.csv``) were made by hand once: frames and mouth
crops at 12.5 fps of both people, the audio's energy and voice activity per 0.2 s. The man on the left speaks from
0.44 s to the end of the audio (8.44 s), with pauses of 0.3-0.5 s (inside his turn: roles are turn-level); the
woman on the right listens (a closed smile, nods) and never speaks; the last 1.5 s of video have no audio.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.conversations import construct, frame_accuracy, segment_f1
from benchmarks.speakers import labels_from_csv, speakers_of
from tests.conftest import CLIPS, CONVERSATION
from workers.errors import ClipError

LABELS = Path(__file__).resolve().parents[1] / "fixtures" / "video_call_interview.roles.csv"
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def light():
    """A clip worker with small crops and a short fit (neither touches who speaks)."""
    from workers.clip import ClipConfig, ClipProcessor
    from workers.morphable import FitConfig

    p = ClipProcessor(ClipConfig(crop_size=96, fit=FitConfig(joint_iters=15, search_iters=8, search_frames=8)))
    yield p
    p.close()


@pytest.fixture(scope="module")
def call(light):
    """The video call, its people named by a manifest-style identity."""
    return light(CONVERSATION, identity="anchor|guest")


def _roles(res, person):
    return [r["role"] for r in res.rows if r["person"] == person]


def test_video_call_matches_the_hand_labels(call):
    res = call
    truth = labels_from_csv(LABELS, res.summary["n_frames"])
    pred = speakers_of(res)
    assert frame_accuracy(pred, truth) >= 0.9
    for r in res.rows:
        assert r["role"] in {"speaker", "listener", "silent"}
        assert r["speaking"] == (r["role"] == "speaker")
        assert 0.0 <= r["speaking_confidence"] <= 1.0
    by_frame = {}
    for r in res.rows:
        by_frame.setdefault(r["frame_index"], set()).add(r["role"])
    assert all(s in ({"speaker", "listener"}, {"silent"}) for s in by_frame.values())  # one speaker, or nobody
    assert res.summary["speakers_s"] > 0


def test_constructed_conversation_follows_the_audio_not_the_mouths(light, tmp_path):
    """Both people's mouths move all the time; only one is heard at a time, switching every 2-3 s."""
    conv = construct(CLIPS[0], CLIPS[1], tmp_path / "conv.mp4", seed=0)
    res = light(conv.path, identity="conv")
    pred = speakers_of(res)
    assert len(conv.switches) >= 3
    assert frame_accuracy(pred, conv.truth) >= 0.9
    assert segment_f1(pred, conv.truth) >= 0.6


def test_a_wide_shot_conversation_gets_its_roles(light, tmp_path):
    """Two people with ~100-px faces in a 1280x720 frame: found (small-face search) and their roles detected."""
    conv = construct(CLIPS[1], CLIPS[2], tmp_path / "wide.mp4", seed=2, height=200, canvas=(1280, 720), max_s=6)
    res = light(conv.path, identity="wide")
    assert res.summary["n_people"] == 2
    assert np.mean([r["face_found"] for r in res.rows]) > 0.95
    assert frame_accuracy(speakers_of(res), conv.truth) >= 0.85


def test_two_people_without_audio_are_silent_with_a_warning(light, tmp_path):
    mute = tmp_path / "mute.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(CONVERSATION), "-t", "3", "-an", "-c:v", "copy",
                    str(mute)], check=True)
    res = light(mute, identity="mute")
    assert res.summary["n_people"] == 2
    assert {r["role"] for r in res.rows} == {"silent"} and not any(r["speaking"] for r in res.rows)
    assert "no audio" in res.summary["warning"]


def test_a_person_who_leaves_keeps_their_rows_and_role(light, tmp_path):
    conv = construct(CLIPS[0], CLIPS[2], tmp_path / "conv.mp4", seed=1)
    covered = tmp_path / "covered.mp4"
    # the right-hand person is hidden behind a grey box from 2.0 to 3.6 s
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(conv.path), "-vf",
                    "drawbox=x=iw/2:y=0:w=iw/2:h=ih:color=gray:t=fill:enable='between(t,2,3.6)'",
                    "-c:a", "copy", str(covered)], check=True)
    res = light(covered, identity="cov")
    rows = [r for r in res.rows if r["person"] == 1]
    assert len(rows) == res.summary["n_frames"]  # every frame keeps its row
    hidden = [r for r in rows if 2.1 <= r["time_s"] <= 3.5]
    assert hidden and not any(r["face_found"] for r in hidden)
    roles = _roles(res, 1)
    flips = sum(a != b for a, b in zip(roles, roles[1:], strict=False))
    assert flips <= len(conv.switches) + 2
    assert frame_accuracy(speakers_of(res), conv.truth) >= 0.8


def test_three_people_keep_the_two_most_visible_unless_asked(light, tmp_path):
    from workers.clip import ClipConfig, ClipProcessor
    from workers.morphable import FitConfig

    three = tmp_path / "three.mp4"
    graph = ";".join(f"[{i}:v]scale=-2:300,setsar=1[v{i}]" for i in range(3)) + ";[v0][v1][v2]hstack=inputs=3[v]"
    subprocess.run(["ffmpeg", "-v", "error", "-y", *sum((["-i", str(c)] for c in CLIPS), []), "-filter_complex",
                    graph, "-map", "[v]", "-map", "0:a", "-t", "3", "-c:v", "libx264", "-preset", "veryfast",
                    "-c:a", "aac", str(three)], check=True)
    res = light(three, identity="three")
    assert res.summary["n_people"] == 2
    assert "3 people found; kept the 2 most visible" in res.summary["warning"]
    p3 = ClipProcessor(ClipConfig(max_people=3, crop_size=96, fit=FitConfig(joint_iters=15, search_iters=8,
                                                                           search_frames=8)))
    try:
        res3 = p3(three, identity="three")
    finally:
        p3.close()
    assert [p.identity for p in res3.people] == ["three_p0", "three_p1", "three_p2"]
    lefts = [p.crop_box[0] for p in res3.people]
    assert lefts == sorted(lefts)  # left to right
    speakers_per_frame = np.sum([[r == "speaker" for r in _roles(res3, k)] for k in range(3)], axis=0)
    assert speakers_per_frame.max() <= 1  # one speaker at a time, the two others listen


def test_names_from_the_manifest_and_too_many_names(light, call):
    res = call
    assert [p.identity for p in res.people] == ["anchor", "guest"]
    assert {r["identity"] for r in res.rows} == {"anchor", "guest"}
    with pytest.raises(ClipError, match=r"names 2 people \(a\|b\) but 1 was found"):
        light(CLIPS[0], identity="a|b")
