"""Conversations read from a real two-person dataset (:mod:`pipelines.conversations`), their QC timeline and the
quality figures (:mod:`pipelines.timeline`, :mod:`pipelines.report`).

The dataset is the shared video call: the person on the left (p0) speaks from ~0.44 s to ~8.44 s, the person on
the right (p1) listens and never speaks, and there is no audio after 8.45 s
(``tests/fixtures/video_call_interview.roles.csv``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipelines import conversations as C
from pipelines import report as R
from pipelines import timeline as T
from pipelines.dataset import Dataset
from tests.conftest import CLIPS, CONVERSATION, SMALL_IDENTITY

pytestmark = pytest.mark.timeout(300)
FPS = 25.0
STEM = CONVERSATION.stem
P0, P1 = f"{STEM}_p0", f"{STEM}_p1"
SPEECH_S = (0.44, 8.44)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Dataset, Dataset]:
    """(the whole video call, 128-px crops; the first 30 frames of a solo clip, with a token fit: only its lack of
    a conversation is tested), built without Ray."""
    from pipelines.commit import write_clip
    from pipelines.dataset import aggregate_identities, write_identities
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for
    from workers.morphable import FitConfig

    solo_clip = next(c for c in CLIPS if c.stem == SMALL_IDENTITY)
    out = []
    quick_fit = FitConfig(focal_grid=(1.6,), fine_steps=0, search_iters=10, rigid_iters=10, joint_iters=10)
    p = ClipProcessor(ClipConfig(crop_size=128, max_frames=None, fit=FitConfig(joint_iters=30)))
    try:
        for clip, config in ((CONVERSATION, p.config), (solo_clip, replace(p.config, max_frames=30, fit=quick_fit))):
            p.config = config
            st = Storage(tmp_path_factory.mktemp(clip.stem) / "ds")
            res = p(str(clip), identity=clip.stem, clip_id=clip_id_for(str(clip)))
            write_clip(st, res, identity=clip.stem)
            write_identities(st, aggregate_identities(Dataset(st).clip_rows().values()))
            out.append(Dataset(st))
    finally:
        p.close()
    return out[0], out[1]


@pytest.fixture(scope="module")
def call(datasets) -> Dataset:
    return datasets[0]


@pytest.fixture(scope="module")
def listing(call) -> dict:
    table = call.conversations()
    assert table.schema.equals(C.CONVERSATIONS_SCHEMA)
    assert table.num_rows == 1
    return table.to_pylist()[0]


@pytest.mark.slow
def test_one_conversation_with_both_people_left_to_right(call, listing):
    clip = next(iter(call.clip_rows().values()))
    assert listing["conversation_id"] == f"{STEM}-{clip['clip_id'][:6]}"
    assert listing["clip_id"] == clip["clip_id"] and listing["source_uri"] == str(CONVERSATION)
    assert (listing["identity_a"], listing["identity_b"]) == (P0, P1)
    assert listing["n_frames"] == clip["n_frames"] > 200 and listing["fps"] == FPS
    assert listing["n_segments"] == len(listing["segments"])


@pytest.mark.slow
def test_segments_cover_every_frame_and_name_the_left_person(listing):
    segs = listing["segments"]
    assert segs[0]["start"] == 0 and segs[-1]["end"] == listing["n_frames"]
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:], strict=False))
    assert all(s["end"] > s["start"] for s in segs)
    assert all(a["speaker"] != b["speaker"] for a, b in zip(segs, segs[1:], strict=False))  # runs are maximal
    speaking = [s for s in segs if s["speaker"] is not None]
    assert speaking and all(s["speaker"] == P0 and s["listener"] == P1 for s in speaking)
    assert all(s["listener"] is None for s in segs if s["speaker"] is None)
    # p0 speaks from ~0.44 s to ~8.44 s; nobody after the audio ends
    first, last = speaking[0]["start"] / FPS, speaking[-1]["end"] / FPS
    assert abs(first - SPEECH_S[0]) < 0.3 and abs(last - SPEECH_S[1]) < 0.3, (first, last)
    assert listing["speaking_share_a"] > 0.7 and listing["speaking_share_b"] == 0.0


@pytest.mark.slow
def test_conversation_rows_aligned_with_consistent_roles(call, listing):
    conv = call.conversation(listing["conversation_id"], columns=["time_s", "mouth_opening"])
    assert conv.identities == (P0, P1) and list(conv.frames) == [P0, P1]
    a, b = (conv.frames[i] for i in conv.identities)
    assert len(a) == len(b) == conv.n_frames == listing["n_frames"]
    assert a.column("frame_index").to_pylist() == b.column("frame_index").to_pylist() == list(range(len(a)))
    assert set(a.column("person").to_pylist()) == {0} and set(b.column("person").to_pylist()) == {1}
    assert "image_jpeg" not in a.column_names and "mouth_opening" in a.column_names
    roles = np.array([a.column("role").to_pylist(), b.column("role").to_pylist()])
    speaking = np.array([a.column("speaking").to_pylist(), b.column("speaking").to_pylist()], bool)
    assert ((roles == "speaker") == speaking).all()  # speaker iff speaking
    assert not speaking.all(0).any()
    for k in (0, 1):  # the other person listens while one speaks; both are silent together
        assert (roles[1 - k][speaking[k]] == "listener").all()
    nobody = ~speaking.any(0)
    assert nobody.any() and (roles[:, nobody] == "silent").all()
    assert a.column("speaking_confidence").equals(b.column("speaking_confidence"))  # one decision per frame
    assert [s.n_frames for s in conv.segments if s.speaker == P0] == [
        s["end"] - s["start"] for s in listing["segments"] if s["speaker"] == P0]


@pytest.mark.slow
def test_conversation_reads_every_column_by_default(call, listing):
    conv = call.conversation(listing["conversation_id"])
    assert conv.frames[P0].column_names[: len(C.LIGHT_COLUMNS) + 1] == ["identity", *C.LIGHT_COLUMNS]
    assert {"image_jpeg", "pose_c2w", "landmarks_2d"} <= set(conv.frames[P1].column_names)


@pytest.mark.slow
def test_listing_reads_only_the_light_columns(call, monkeypatch):
    seen = []
    real_read = C._read

    def spy(dataset, cid, row, columns):
        seen.append(list(columns))
        return real_read(dataset, cid, row, columns)

    monkeypatch.setattr(C, "_read", spy)
    convs = C.list_conversations(call)
    assert seen == [C.LIGHT_COLUMNS] and len(convs) == 1 and convs[0].frames == {}
    assert C.list_conversations(call, identity=P1)[0].conversation_id == convs[0].conversation_id
    assert C.list_conversations(call, identity="nobody") == []


@pytest.mark.slow
def test_unknown_conversation_names_the_known_ones(call, listing):
    with pytest.raises(KeyError, match=listing["conversation_id"]):
        call.conversation("not-a-conversation")


@pytest.mark.slow
def test_solo_clip_is_no_conversation(datasets):
    solo = datasets[1]
    assert solo.identity_names() == [SMALL_IDENTITY]
    table = solo.conversations()
    assert table.num_rows == 0 and table.schema.equals(C.CONVERSATIONS_SCHEMA)
    with pytest.raises(KeyError, match="conversations: none"):
        solo.conversation("anything")
    figures = R.write_reports(solo)
    assert figures[0]["speaker_segments"] is None and figures[0]["speaking_share"] is None
    assert R.read_quality_table(solo)[0]["speaking_share"] is None
    assert solo.storage.list_files("qc", ".png") == [f"qc/{SMALL_IDENTITY}.png"]  # no timeline


@pytest.mark.slow
def test_report_writes_the_timeline_and_the_speaking_figures(call, listing):
    figures = {f["identity"]: f for f in R.write_reports(call)}
    assert set(figures) == {P0, P1}
    rel = T.png_path(listing["conversation_id"])
    assert rel == f"qc/conversation_{listing['conversation_id']}.png"
    png = cv2.imdecode(np.frombuffer(call.storage.read_bytes(rel), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and png.shape == (50 + 5 * 70 + 34, T.WIDTH, 3)
    assert png.std() > 20  # drawn, not blank
    lines = call.storage.read_bytes(R.QUALITY_TABLE_PATH).decode().splitlines()
    assert lines[0].split(",")[-2:] == ["speaker_segments", "speaking_share"]
    quality = {q["identity"]: q for q in R.read_quality_table(call)}
    assert quality[P0]["speaking_share"] > 0.7 and quality[P0]["speaker_segments"] >= 1
    assert quality[P1]["speaking_share"] == 0.0 and quality[P1]["speaker_segments"] == 0
    assert quality[P0]["speaker_segments"] == sum(s["speaker"] == P0 for s in listing["segments"])
    assert figures[P0]["speaking_share"] == pytest.approx(listing["speaking_share_a"])


@pytest.mark.slow
def test_timeline_needs_the_rows(call, listing):
    with pytest.raises(ValueError, match="columns"):
        T.timeline_image(C.list_conversations(call)[0])


# without a dataset -----------------------------------------------------------------------------------


def test_segments_of_runs():
    speaker = np.array([-1, -1, 0, 0, 0, 1, -1, 1, 1])
    segs = C.segments_of(np.arange(10, 19), speaker, ("a", "b"))
    assert [(s.start, s.end, s.speaker, s.listener) for s in segs] == [
        (10, 12, None, None), (12, 15, "a", "b"), (15, 16, "b", "a"), (16, 17, None, None), (17, 19, "b", "a")]
    assert C.segments_of(np.zeros(0, int), np.zeros(0, int), ("a", "b")) == []


def test_conversation_id_is_a_safe_name():
    assert C.conversation_id("s3://bucket/calls/José y Ana.mp4?v=2", "abcdef0123") == "Jose_y_Ana-abcdef"
    assert C.conversation_id("/data/call.mp4", "0123456789") == "call-012345"


def test_rows_missing_for_one_person_are_aligned_as_nulls():
    def table(person: int, frames: list[int]) -> pa.Table:
        return pa.table({"identity": [f"x_p{person}"] * len(frames), "clip_id": ["c"] * len(frames),
                         "person": pa.array([person] * len(frames), pa.int16()),
                         "frame_index": pa.array(frames, pa.int32()), "speaking": [True] * len(frames)})

    a, b = C._aligned([table(0, [0, 1, 2, 3]), table(1, [3, 0, 2])], "c")
    assert a.column("frame_index").to_pylist() == b.column("frame_index").to_pylist() == [0, 1, 2, 3]
    assert b.column("speaking").to_pylist() == [True, None, True, True]
    assert b.column("identity").to_pylist() == ["x_p1"] * 4 and b.column("person").to_pylist() == [1] * 4


def test_tick_step_keeps_the_axis_readable():
    assert T._tick_step(9.9) == 1.0 and T._tick_step(120) == 10.0 and T._tick_step(3) == 0.5


def test_fixture_matches_the_clip():
    """The speech interval used here is the hand-checked one of the fixture."""
    rows = Path(__file__).resolve().parents[1].joinpath("fixtures", "video_call_interview.roles.csv").read_text()
    assert "0.44,8.44,p0" in rows


@pytest.mark.slow
def test_export_writes_each_person_of_the_conversation(call, listing, tmp_path):
    import json

    from pipelines.export import export_conversation

    cid = listing["conversation_id"]
    reports = export_conversation(call, cid, tmp_path / "out")
    assert [r.identity for r in reports] == [listing["identity_a"], listing["identity_b"]]
    for r in reports:
        assert (r.output / "transforms_train.json").is_file() and (r.output / "aud.npy").is_file()
        assert r.clips == [listing["clip_id"]] and r.n_frames > 200
    meta = json.loads((tmp_path / "out" / "conversation.json").read_text())
    assert meta["identities"] == [listing["identity_a"], listing["identity_b"]]
    assert meta["segments"][0]["start"] == 0 and meta["segments"][-1]["end"] == meta["n_frames"]
    with pytest.raises(KeyError, match="no conversation 'nope-000000'"):
        export_conversation(call, "nope-000000", tmp_path / "x")
