"""The frames/ and clips/ Parquet tables: null features survive a multi-file round trip."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from pipelines.schema import array, clips_table, frames_table


def _row(i: int, face: bool) -> dict:
    row = {"identity": "a", "clip_id": "c", "person": 0, "frame_index": i, "face_found": face}
    if face:
        row["landmarks_2d"] = np.arange(136, dtype=np.float32).reshape(68, 2)
        row["pose_c2w"] = np.eye(4, dtype=np.float32)
    else:
        row["error"] = "no face detected"
    return row


def test_rows_with_and_without_faces_round_trip_through_a_directory(tmp_path):
    """Two files, one all-null in the array columns, read back as one table with shapes intact."""
    pq.write_table(frames_table([_row(0, True), _row(1, False)]), tmp_path / "1.parquet")
    pq.write_table(frames_table([_row(2, False)]), tmp_path / "2.parquet")
    rows = sorted(pq.read_table(tmp_path).to_pylist(), key=lambda r: r["frame_index"])
    assert [r["face_found"] for r in rows] == [True, False, False]
    assert array(rows[0], "landmarks_2d").shape == (68, 2) and array(rows[0], "landmarks_2d")[67, 1] == 135
    assert np.allclose(array(rows[0], "pose_c2w"), np.eye(4))
    assert array(rows[1], "landmarks_2d") is None and rows[1]["error"] == "no face detected"


def test_failed_clip_rows_have_nulls_not_errors(tmp_path):
    """A failed clip's summary needs only id, source, status and error."""
    pq.write_table(clips_table([{"clip_id": "x", "source_uri": "s3://b/x.mp4", "status": "failed",
                                 "error": "file is empty (0 bytes)"}]), tmp_path / "x.parquet")
    row = pq.read_table(tmp_path).to_pylist()[0]
    assert row["status"] == "failed" and row["n_frames"] is None and row["content_box"] is None
