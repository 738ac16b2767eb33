"""Lens distortion as ROS's CameraInfo describes it, removed before an image reaches the model.

The models are trained on nuScenes-style images, which are undistorted: each camera is a
pinhole K. A robot's camera driver usually publishes the raw image with its distortion in
CameraInfo (`distortion_model` and `d`), and that image used as a pinhole puts every pixel
off by up to tens of pixels at the edges, so boxes land in the wrong place. Such an image is
remapped to the pinhole K of its CameraInfo (image_proc's rectification with the new camera
matrix = K), at the resolution it is decoded at: one remap table per camera and size, kept
until its calibration changes.

Models (the names and coefficient orders of ROS's sensor_msgs/distortion_models.hpp, which
are OpenCV's): plumb_bob (k1, k2, t1, t2, k3), rational_polynomial (k1, k2, t1, t2, k3, k4, k5,
k6), equidistant (the fisheye k1, k2, k3, k4). Any model with all-zero coefficients is a pinhole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

COEFFICIENTS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


class DistortionError(ValueError):
    """A distortion the camera path cannot remove (one line naming the model)."""


@dataclass(frozen=True)
class Distortion:
    model: str
    coefficients: tuple[float, ...]  # COEFFICIENTS[model] of them, in ROS's (= OpenCV's) order


def distortion_of(model: str, coefficients: Sequence[float]) -> Distortion | None:
    """The distortion to remove, None for a pinhole (no or all-zero coefficients, any model name).
    Fewer coefficients than the model has are the leading ones (the rest zero, as OpenCV reads
    them); DistortionError for an unsupported model or more coefficients than it has."""
    values = tuple(float(c) for c in coefficients)
    if not all(np.isfinite(values)):
        raise DistortionError(f"distortion coefficients {list(values)} are not all finite")
    if not any(values):
        return None
    if model not in COEFFICIENTS:
        raise DistortionError(f"distortion model '{model}' is not supported (supported: "
                              f"{', '.join(COEFFICIENTS)}); undistort the image before it reaches the node")
    if len(values) > COEFFICIENTS[model]:
        raise DistortionError(f"distortion model '{model}' has {COEFFICIENTS[model]} coefficients, "
                              f"not {len(values)}")
    return Distortion(model, values + (0.0,) * (COEFFICIENTS[model] - len(values)))


class Undistorter:
    """Removes one camera's distortion; the remap table of the last size and K is kept (a
    camera's images come at one size), so a table is computed once per calibration."""

    def __init__(self, distortion: Distortion):
        self.distortion = distortion
        self._table: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None

    def __call__(self, rgb: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
        """`rgb` as the pinhole `intrinsics` (its own K, at its size) would have seen it."""
        height, width = rgb.shape[:2]
        key = (width, height, np.asarray(intrinsics, dtype=np.float64).tobytes())
        if self._table is None or self._table[0] != key:
            self._table = key, self._remap_table(intrinsics, (width, height))
        map_xy, map_fraction = self._table[1]
        return cv2.remap(rgb, map_xy, map_fraction, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def _remap_table(self, intrinsics: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        k = np.asarray(intrinsics, dtype=np.float64)
        d = np.array(self.distortion.coefficients, dtype=np.float64)
        if self.distortion.model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(k, d, np.eye(3), k, size, cv2.CV_16SC2)
        return cv2.initUndistortRectifyMap(k, d, None, k, size, cv2.CV_16SC2)
