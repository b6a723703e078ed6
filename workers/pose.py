"""Head pose as six numbers and back: (pitch, yaw, roll, tx, ty, tz) <-> the ``pose_c2w`` matrix of ``frames/``.

``pose_c2w`` (:mod:`workers.morphable`) is camera-to-world with the head fixed at the world origin (the camera
moves). Models of head motion (DialogueNeRF's pose TCN, pose metrics) want the other view: the head's rotation and
position in the camera's coordinates (OpenGL axes: x right, y up, the camera looks down -z), which is the inverse
matrix::

    R_head = R_c2w^T            t_head = -R_c2w^T t_c2w          (metres)

Euler angles (radians) are **intrinsic x-y-z**::

    R_head = Rx(pitch) @ Ry(yaw) @ Rz(roll)

with ``Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]`` and likewise (right-handed, counter-clockwise
seen from the axis' tip) for ``Ry`` and ``Rz``. So pitch is nodding about x (positive: the face turns down, towards
-y), yaw is turning about y (positive: the face turns towards +x, the camera's right, i.e. the person's left),
roll is tilting about z (positive: the top of the head leans towards -x, counter-clockwise in the image). A
frontal head has all three at zero. A nod about the camera's x axis (``Rx(d) @ R_head``) changes pitch only,
whatever the yaw and roll. The decomposition is unique for ``|yaw| < 90`` degrees (gimbal lock at
+-90: roll is then set to zero and pitch takes the rest); heads in talking-head footage stay far from it.
"""

from __future__ import annotations

import numpy as np


def _rotation(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``Rx(pitch) @ Ry(yaw) @ Rz(roll)``: [...] x3 -> [..., 3, 3]."""
    ca, sa = np.cos(pitch), np.sin(pitch)
    cb, sb = np.cos(yaw), np.sin(yaw)
    cc, sc = np.cos(roll), np.sin(roll)
    rows = [
        [cb * cc, -cb * sc, sb],
        [ca * sc + sa * sb * cc, ca * cc - sa * sb * sc, -sa * cb],
        [sa * sc - ca * sb * cc, sa * cc + ca * sb * sc, ca * cb],
    ]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def _euler(r: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) [..., 3] of rotations [..., 3, 3] (see the module docstring)."""
    yaw = np.arctan2(r[..., 0, 2], np.hypot(r[..., 0, 0], r[..., 0, 1]))
    locked = np.hypot(r[..., 0, 0], r[..., 0, 1]) < 1e-9
    pitch = np.where(locked, np.arctan2(r[..., 2, 1], r[..., 1, 1]), np.arctan2(-r[..., 1, 2], r[..., 2, 2]))
    roll = np.where(locked, 0.0, np.arctan2(-r[..., 0, 1], r[..., 0, 0]))
    return np.stack([pitch, yaw, roll], -1)


def pose_to_6d(pose_c2w: np.ndarray) -> np.ndarray:
    """The head's pose in camera coordinates as (pitch, yaw, roll, tx, ty, tz).

    Args:
        pose_c2w: [..., 4, 4] camera-to-world matrices (``frames/`` ``pose_c2w``, reshaped), translation in metres.

    Returns:
        float64 [..., 6]: Euler angles in radians (intrinsic x-y-z, module docstring), then the head's position in
        camera coordinates in metres (``tz < 0``: in front of the camera).
    """
    m = np.asarray(pose_c2w, np.float64)
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"pose_c2w must be [..., 4, 4], got {m.shape}")
    r_head = np.swapaxes(m[..., :3, :3], -1, -2)
    t_head = -np.einsum("...ij,...j->...i", r_head, m[..., :3, 3])
    return np.concatenate([_euler(r_head), t_head], -1)


def pose_from_6d(pose_6d: np.ndarray) -> np.ndarray:
    """The camera-to-world matrices of 6-D head poses: the inverse of :func:`pose_to_6d`.

    Args:
        pose_6d: [..., 6] (pitch, yaw, roll in radians, tx, ty, tz in metres) of the head in camera coordinates.

    Returns:
        float64 [..., 4, 4] ``pose_c2w`` (rotation ``R_head^T``, translation ``-R_head^T t_head``).
    """
    p = np.asarray(pose_6d, np.float64)
    if p.shape[-1] != 6:
        raise ValueError(f"pose_6d must be [..., 6], got {p.shape}")
    r_c2w = np.swapaxes(_rotation(p[..., 0], p[..., 1], p[..., 2]), -1, -2)
    out = np.zeros((*p.shape[:-1], 4, 4))
    out[..., :3, :3] = r_c2w
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", r_c2w, p[..., 3:])
    out[..., 3, 3] = 1.0
    return out
