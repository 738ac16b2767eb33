"""The detector's settings as one typed value, ROS-free: vexkd_ros.detector_parameters reads and
validates them, the pipeline uses them, a parameter change swaps the whole value."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.structures import Boxes3D


@dataclass(frozen=True)
class DetectorSettings:
    checkpoint: str
    backend: str  # torch or onnxruntime
    device: str
    score_threshold: float
    class_score_thresholds: dict[str, float]  # per class; the higher of it and the global one applies
    max_camera_delay: float  # seconds
    sweeps: int  # past sweeps; -1: as the model was trained
    map_classes: tuple[str, ...]
    publish_markers: bool
    marker_score_threshold: float  # markers are for eyes: low-score boxes would bury the scene
    image_transport: str
    fixed_frame: str  # a world-fixed frame to move past sweeps and camera frames through
    bev_frame: str  # camera_detector only: the frame its boxes and grids are in (the trained LiDAR frame)
    tf_timeout: float  # seconds an input waits for the transform of its stamp before it runs without it

    def lowest_threshold(self) -> float:
        return min([self.score_threshold, *self.class_score_thresholds.values()]) \
            if self.class_score_thresholds else self.score_threshold

    def filter(self, boxes: Boxes3D) -> Boxes3D:
        thresholds = np.array([max(self.score_threshold, self.class_score_thresholds.get(name, 0.0))
                               for name in DETECTION_CLASSES])
        return boxes.select(boxes.score >= thresholds[boxes.label.astype(np.int64)])
