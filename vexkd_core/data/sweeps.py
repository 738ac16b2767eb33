"""Multi-sweep LiDAR input, shared by the dataset reader and the ROS nodes.

A model trained on K past sweeps sees every sweep moved into the key sweep's sensor frame
with its age in seconds as a fifth channel. Both producers go through `without_ego_points`
and `into_key_frame` (the dataset reader as `sweep_in_key_frame`), so a node builds exactly
the points its model was trained on.
"""
from __future__ import annotations

import numpy as np

from vexkd_core.geometry import transform_points

MIN_POINT_DISTANCE_M = 1.0  # returns from the ego vehicle itself


def sweep_in_key_frame(raw: np.ndarray, sensor_to_key: np.ndarray, lag_s: float) -> np.ndarray:
    """(N, >=4) x, y, z, intensity in the sweep's sensor frame -> (M, 5) float32 in the key
    frame, without the ego's own returns (without_ego_points, then into_key_frame)."""
    return into_key_frame(without_ego_points(raw), sensor_to_key, lag_s)


def without_ego_points(raw: np.ndarray) -> np.ndarray:
    """(N, >=4) -> (M, 4) x, y, z, intensity of the points at least MIN_POINT_DISTANCE_M from
    the sensor axis: nearer ones are the ego vehicle's own body. A node does this once per
    sweep, not again each time the sweep is a past one."""
    return np.compress(np.hypot(raw[:, 0], raw[:, 1]) >= MIN_POINT_DISTANCE_M, raw[:, :4], axis=0)


def into_key_frame(points: np.ndarray, sensor_to_key: np.ndarray, lag_s: float,
                   out: np.ndarray | None = None) -> np.ndarray:
    """(M, 4) from without_ego_points -> (M, 5) float32 in the key frame, the lag in seconds
    as fifth column; written into `out` when given (a node fills one array with all sweeps).

    Moved in float64 and rounded once. The identity (a node's key sweep) copies the float32
    coordinates straight: the same values, without a float64 copy of 35k points a frame.
    """
    out = np.empty((len(points), 5), np.float32) if out is None else out
    if np.array_equal(sensor_to_key, np.eye(4)):
        out[:, :3] = points[:, :3]
    else:
        out[:, :3] = transform_points(sensor_to_key, points[:, :3])
    out[:, 3] = points[:, 3]
    out[:, 4] = lag_s
    return out
