"""Head pose as six numbers (:mod:`workers.pose`): the exact inverse of itself, the angles mean what they say, and
real fitted poses survive the round trip."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import schema
from workers.pose import pose_from_6d, pose_to_6d


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _c2w(r_head: np.ndarray, t_head: np.ndarray) -> np.ndarray:
    """The camera-to-world matrix of a head at ``R_head x + t_head`` in camera coordinates."""
    out = np.eye(4)
    out[:3, :3] = r_head.T
    out[:3, 3] = -r_head.T @ t_head
    return out


def _random_6d(rng: np.random.Generator, n: int) -> np.ndarray:
    ang = rng.uniform(-np.pi, np.pi, (n, 3))
    ang[:, 1] = rng.uniform(-np.radians(80), np.radians(80), n)  # yaw away from gimbal lock
    return np.concatenate([ang, rng.normal(0, 0.3, (n, 3)) + [0, 0, -1.0]], 1)


def test_round_trip_on_random_poses():
    """6-D -> matrix -> 6-D and matrix -> 6-D -> matrix both hold to 1e-6, batched in any leading shape."""
    p6 = _random_6d(np.random.default_rng(0), 500)
    m = pose_from_6d(p6)
    assert m.shape == (500, 4, 4)
    assert np.allclose(m[:, :3, :3] @ m[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(pose_to_6d(m), p6, atol=1e-6)
    assert np.allclose(pose_from_6d(pose_to_6d(m)), m, atol=1e-6)
    batched = pose_to_6d(m.reshape(5, 100, 4, 4))
    assert batched.shape == (5, 100, 6) and np.allclose(batched.reshape(500, 6), p6, atol=1e-6)
    assert pose_to_6d(m[0]).shape == (6,)


def test_matches_the_documented_euler_order():
    """R_head = Rx(pitch) Ry(yaw) Rz(roll); the translation is the head's position in camera coordinates."""
    pitch, yaw, roll, t = 0.3, -0.5, 0.2, np.array([0.05, -0.02, -0.9])
    m = _c2w(_rx(pitch) @ _ry(yaw) @ _rz(roll), t)
    assert np.allclose(pose_to_6d(m), [pitch, yaw, roll, *t], atol=1e-12)


def test_identity_pose_is_zero_but_translation():
    """A frontal head (no rotation) has zero angles; the translation is the head's position seen from the camera."""
    m = np.eye(4)
    m[:3, 3] = [0.1, -0.2, 1.5]  # camera 1.5 m in front of the head (+z), head-frame axes
    assert np.allclose(pose_to_6d(m), [0, 0, 0, -0.1, 0.2, -1.5])
    assert np.allclose(pose_to_6d(np.eye(4)), np.zeros(6))


@pytest.mark.parametrize("base", [(0.0, 0.0, 0.0), (0.2, 0.6, -0.3)])
def test_pure_nod_changes_only_pitch(base):
    """Nodding (a rotation about the camera's x axis) changes pitch only, from a frontal or a turned head."""
    t = np.array([0.0, 0.0, -1.0])
    r0 = _rx(base[0]) @ _ry(base[1]) @ _rz(base[2])
    before = pose_to_6d(_c2w(r0, t))
    after = pose_to_6d(_c2w(_rx(0.25) @ r0, t))
    assert np.allclose(after - before, [0.25, 0, 0, 0, 0, 0], atol=1e-12)
    # the face turns down with a positive pitch: its normal (+z of the head) gets a -y component
    assert (_rx(0.25) @ r0 @ [0, 0, 1])[1] < (r0 @ [0, 0, 1])[1]


def test_turn_and_tilt_change_only_yaw_and_roll():
    """From a frontal head, a turn about y is yaw only and a tilt about z is roll only."""
    t = np.array([0.0, 0.0, -1.0])
    assert np.allclose(pose_to_6d(_c2w(_ry(0.4), t)), [0, 0.4, 0, *t])
    assert np.allclose(pose_to_6d(_c2w(_rz(-0.3), t)), [0, 0, -0.3, *t])


def test_gimbal_lock_still_inverts():
    """At yaw = 90 degrees roll is set to zero and the matrix is still reproduced."""
    m = pose_from_6d(np.array([0.3, np.pi / 2, 0.4, 0, 0, -1]))
    p6 = pose_to_6d(m)
    assert p6[2] == 0.0 and np.allclose(pose_from_6d(p6), m, atol=1e-9)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="4, 4"):
        pose_to_6d(np.eye(3))
    with pytest.raises(ValueError, match="6"):
        pose_from_6d(np.zeros(5))


def test_schema_re_exports_them():
    """nerf reads pipelines.schema only: the conversions are there."""
    assert schema.pose_to_6d is pose_to_6d and schema.pose_from_6d is pose_from_6d


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_round_trip_on_real_fitted_poses(small_dataset):
    """The fitted poses of a real clip: head in front of the camera, small angles, round trip to 1e-6."""
    from pipelines.dataset import Dataset
    from tests.conftest import SMALL_IDENTITY

    table = Dataset(small_dataset).frames(SMALL_IDENTITY, columns=["pose_c2w", "face_found"])
    poses = np.array([p for p in table.column("pose_c2w").to_pylist() if p is not None], np.float64)
    assert len(poses) >= 25
    m = poses.reshape(-1, 4, 4)
    p6 = pose_to_6d(m)
    assert np.allclose(pose_from_6d(p6), m, atol=1e-6)
    assert np.allclose(pose_to_6d(pose_from_6d(p6)), p6, atol=1e-6)
    assert (p6[:, 5] < 0).all()  # the head is in front of the camera (OpenGL: -z)
    assert (np.abs(np.degrees(p6[:, :3])) < 45).all()  # a talking head faces the camera
