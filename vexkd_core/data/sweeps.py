"""Multi-sweep LiDAR input, shared by the dataset reader and the ROS nodes.

A model trained on K past sweeps sees every sweep moved into the key sweep's sensor frame
with its age in seconds as a fifth channel. Both producers call `sweep_in_key_frame` so
a node builds exactly the points its model was trained on.
"""
from __future__ import annotations

import numpy as np

from vexkd_core.geometry import transform_points

MIN_POINT_DISTANCE_M = 1.0  # returns from the ego vehicle itself


def sweep_in_key_frame(raw: np.ndarray, sensor_to_key: np.ndarray, lag_s: float) -> np.ndarray:
    """(N, >=4) x, y, z, intensity in the sweep's sensor frame -> (M, 5) float32 in the key frame.

    Points within MIN_POINT_DISTANCE_M of the sensor axis (the ego's own body) are dropped.
    """
    raw = raw[np.hypot(raw[:, 0], raw[:, 1]) >= MIN_POINT_DISTANCE_M]
    out = np.empty((len(raw), 5), np.float32)  # filled column by column: no float64 stack to copy
    out[:, :3] = transform_points(sensor_to_key, raw[:, :3].astype(np.float64))
    out[:, 3] = raw[:, 3]
    out[:, 4] = lag_s
    return out
