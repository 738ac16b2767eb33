"""Rigid transforms and quaternions (w, x, y, z as nuScenes stores them), in numpy."""
from __future__ import annotations

import numpy as np


def quaternion_to_matrix(wxyz) -> np.ndarray:
    """3x3 rotation from a (w, x, y, z) quaternion; the quaternion need not be unit."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(w, x, y, z) with w >= 0 from a 3x3 rotation (Shepperd's method, stable near 180 deg)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q if q[0] >= 0 else -q


def yaw_to_quaternion(yaw) -> np.ndarray:
    """(w, x, y, z) of a rotation by `yaw` radians about +z; (..., 4) for an array of yaws."""
    half = np.asarray(yaw) / 2.0  # in the yaw's own precision, as the scalar formula always was
    zero = np.zeros_like(half)
    return np.stack([np.cos(half), zero, zero, np.sin(half)], axis=-1).astype(np.float64)


def matrix_yaw(rotation: np.ndarray) -> float:
    """Heading about +z of a rotation (or of a transform's rotation): its x axis projected on the ground."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def quaternion_yaw(wxyz) -> float:
    """Heading about +z of a (w, x, y, z) quaternion."""
    return matrix_yaw(quaternion_to_matrix(wxyz))


def make_transform(rotation_wxyz, translation) -> np.ndarray:
    """4x4 homogeneous transform from a quaternion and a translation."""
    transform = np.eye(4)
    transform[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    transform[:3, 3] = translation
    return transform


def invert_transform(transform: np.ndarray) -> np.ndarray:
    inverse = np.eye(4)
    inverse[:3, :3] = transform[:3, :3].T
    inverse[:3, 3] = -transform[:3, :3].T @ transform[:3, 3]
    return inverse


def transform_points(transform: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points: (N, 3) float64, float32 points widened first.

    The identity is not multiplied (the same values, without the work): inference applies
    it to a node's ~35-140k points every frame, as the key sweep's pose and as augmentation.
    """
    if np.array_equal(transform, np.eye(4)):
        return xyz.astype(np.float64)
    moved = np.matmul(xyz, transform[:3, :3].T, dtype=np.float64)
    moved += transform[:3, 3]
    return moved
