"""Landmark mapping and face tracking."""

from __future__ import annotations

import numpy as np

from workers.landmarks import MEDIAPIPE_TO_68, Face, FaceTracker


def _face(cx: float, cy: float, size: float = 100.0) -> Face:
    lms = np.zeros((68, 2), np.float32) + [cx, cy]
    return Face(lms, np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], np.float32))


def test_mapping_is_68_distinct_surface_points():
    """The 478 -> 68 table has 68 distinct face-surface indices (no iris points)."""
    assert MEDIAPIPE_TO_68.shape == (68,)
    assert len(set(MEDIAPIPE_TO_68.tolist())) == 68
    assert MEDIAPIPE_TO_68.min() >= 0 and MEDIAPIPE_TO_68.max() < 468


def test_tracker_keeps_ids_when_order_changes():
    """Two people keep their ids even when the detector lists them in another order."""
    tr = FaceTracker()
    a = tr.update(0, [_face(100, 100), _face(500, 100)])
    b = tr.update(1, [_face(505, 102), _face(98, 101)])
    assert a == [0, 1] and b == [1, 0]


def test_tracker_starts_a_new_id_for_a_far_face_and_after_a_long_gap():
    """A face far from every track, or seen again after the gap limit, is a new person."""
    tr = FaceTracker(max_gap=5)
    tr.update(0, [_face(100, 100)])
    assert tr.update(1, [_face(400, 100)]) == [1]
    assert tr.update(2, [_face(102, 100)]) == [0]
    assert tr.update(20, [_face(102, 100)]) == [2]


def test_select_people_drops_posters_and_passers_by_and_orders_left_to_right():
    from workers.landmarks import Face, select_people

    def face(x, size):
        return Face(np.zeros((68, 2), np.float32), np.array([x, 100, x + size, 100 + size], np.float32))

    n = 100
    per_frame = []
    for i in range(n):
        faces = [(0, face(600, 120)), (1, face(100, 110)), (2, face(900, 30))]  # right, left, a poster behind
        if 40 <= i < 50:
            faces.append((3, face(350, 115)))  # a passer-by, 10% of the frames
        per_frame.append(faces)
    people, extra = select_people(per_frame, n, 2, 0.2, 0.4)
    assert people == [1, 0] and extra == 0  # the poster (1/4 the size) and the passer-by are not people
    people, extra = select_people(per_frame, n, 1, 0.2, 0.4)
    assert len(people) == 1 and extra == 1
    assert select_people(per_frame, n, 3, 0.2, 0.2)[0] == [1, 0, 2]  # a lower size bar keeps the poster
