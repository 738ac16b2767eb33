"""The one contract between data sources (nuScenes devkit, ROS messages) and the models."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vexkd_core.structures import BEVGrid, Boxes3D

# The camera order every model input uses.
CAMERA_CHANNELS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
POINT_FEATURES = ("x", "y", "z", "intensity", "time_lag")


@dataclass
class CameraView:
    channel: str
    image: np.ndarray | None  # (H, W, 3) uint8 RGB; None when the camera is missing
    intrinsics: np.ndarray  # (3, 3)
    camera_to_lidar: np.ndarray  # (4, 4) into the key LiDAR frame, ego motion included


@dataclass
class Sample:
    """One key frame: what the sensors saw, in the key frame's LiDAR frame."""

    token: str
    timestamp_us: int
    points: np.ndarray  # (N, 5) float32: x, y, z, intensity, time lag in seconds
    cameras: list[CameraView]  # in CAMERA_CHANNELS order
    lidar_to_global: np.ndarray  # (4, 4), to write results in the global frame
    boxes: Boxes3D | None = None  # ground truth in the LiDAR frame (training, evaluation)
    # (6, H, W) bool on map_source_grid, MAP_CLASSES order; None where there is no map ground
    # truth (a dataset without the map expansion download, a sensor frame from ROS)
    map_masks: np.ndarray | None = None
    map_source_grid: BEVGrid | None = None  # larger than the model's map grid, for augmentation


SENSORS = ("lidar", "camera")


def without_sensor(sample: Sample, sensor: str) -> Sample:
    """The sample as a rig with that sensor missing: no points, or every camera left out
    (as the ROS nodes leave out a camera that did not arrive)."""
    if sensor == "lidar":
        return dataclasses.replace(sample, points=np.zeros((0, sample.points.shape[1]), np.float32))
    if sensor == "camera":
        return dataclasses.replace(sample, cameras=[dataclasses.replace(view, image=None) for view in sample.cameras])
    raise ValueError(f"sensor must be one of {SENSORS}, not '{sensor}'")
