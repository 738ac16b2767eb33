"""The nuScenes-like sensor rig and its timing.

Extrinsics follow the nuScenes vehicles: LIDAR_TOP on the roof with its x axis to the
right (yaw -90 deg), six cameras covering 360 deg. Intrinsics are the nuScenes ones
scaled to the requested image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vexkd_core.geometry import matrix_to_quaternion

LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_CHANNELS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT",
                   "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")

KEYFRAME_PERIOD_US = 500_000  # 2 Hz samples
LIDAR_PERIOD_US = 50_000  # 20 Hz sweeps
CAMERA_PERIOD_US = 500_000 // 6  # 12 Hz

# HDL-32E: 32 beams from +10.67 deg down to -30.67 deg; returns out to 100 m (Velodyne's
# HDL-32E datasheet; the nuScenes paper quotes <= 70 m as the usable range).
LIDAR_ELEVATIONS_DEG = np.linspace(10.67, -30.67, 32)
LIDAR_MAX_RANGE_M = 100.0
# The sweep a LIDAR_TOP stamp names ends at the stamp, pointing here (ego azimuth, clockwise
# seen from above). In nuScenes v1.0-mini's first sample (scene-0061) every camera's stamp
# precedes the LiDAR's by the time the LiDAR takes to turn from that camera's axis to this
# azimuth, just past CAM_BACK_LEFT's (110 deg): FRONT_LEFT -43.1 ms, FRONT -35.5,
# FRONT_RIGHT -27.6, BACK_RIGHT -20.1, BACK -10.4, BACK_LEFT -0.5.
LIDAR_SWEEP_END_AZIMUTH_DEG = 106.0
NUSCENES_IMAGE_SIZE = (1600, 900)

# Camera axes (x right, y down, z forward) expressed in a forward-looking ego frame.
_CAMERA_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SensorMount:
    channel: str
    translation: tuple[float, float, float]  # in the ego frame, metres
    yaw_deg: float  # heading of the sensor's viewing direction in the ego frame
    focal_px_at_1600: float = 0.0  # cameras only

    @property
    def is_camera(self) -> bool:
        return self.channel.startswith("CAM")

    def rotation(self) -> np.ndarray:
        """3x3 sensor -> ego rotation."""
        if self.is_camera:
            return _yaw_matrix(np.radians(self.yaw_deg)) @ _CAMERA_AXES_IN_EGO
        return _yaw_matrix(np.radians(self.yaw_deg))

    def azimuth_rad(self) -> float:
        return float(np.radians(self.yaw_deg)) if self.is_camera else 0.0


MOUNTS: tuple[SensorMount, ...] = (
    SensorMount(LIDAR_CHANNEL, (0.943, 0.0, 1.841), -90.0),
    SensorMount("CAM_FRONT", (1.700, 0.016, 1.511), 0.0, 1266.4),
    SensorMount("CAM_FRONT_RIGHT", (1.550, -0.493, 1.495), -55.0, 1260.8),
    SensorMount("CAM_BACK_RIGHT", (1.029, -0.484, 1.580), -110.0, 1259.5),
    SensorMount("CAM_BACK", (0.033, 0.003, 1.580), 180.0, 809.2),
    SensorMount("CAM_BACK_LEFT", (1.036, 0.484, 1.591), 110.0, 1256.7),
    SensorMount("CAM_FRONT_LEFT", (1.522, 0.495, 1.509), 55.0, 1272.6),
)
MOUNT_BY_CHANNEL = {mount.channel: mount for mount in MOUNTS}

# The nuScenes cars are Renault Zoes (nuScenes paper): 4.08 m long, 1.73 m wide without
# mirrors, 1.56 m tall, wheelbase 2.59 m (Renault's figures). The ego frame's origin lies on
# the ground under the rear axle, so with about 0.84 m of overhang in front and 0.66 m behind
# the body spans x = -0.66..3.42. Two boxes as (min corner, max corner) in the ego frame: the
# body up to the window line and the cabin under the roof the LiDAR is mounted on.
EGO_BODY_BOXES = (((-0.66, -0.865, 0.20), (3.42, 0.865, 0.95)),
                  ((0.05, -0.70, 0.95), (2.25, 0.70, 1.56)))


def intrinsics(mount: SensorMount, image_size: tuple[int, int]) -> np.ndarray:
    """3x3 K for an image of (width, height), the nuScenes optics scaled to that width."""
    width, height = image_size
    focal = mount.focal_px_at_1600 * width / NUSCENES_IMAGE_SIZE[0]
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def calibrated_mount(mount: SensorMount, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(translation, rotation quaternion wxyz) of one vehicle's calibration: the nominal
    mount perturbed by a few millimetres and a tenth of a degree, as calibrations differ."""
    translation = np.asarray(mount.translation) + rng.normal(0.0, 0.004, 3)
    small = rng.normal(0.0, np.radians(0.1), 3)
    perturbation = _yaw_matrix(small[2]) @ _rotation_x(small[0]) @ _rotation_y(small[1])
    return translation, matrix_to_quaternion(perturbation @ mount.rotation())


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def sweep_offset_s(ego_azimuth: np.ndarray | float) -> np.ndarray:
    """Seconds from a sweep's stamp (<= 0) to when the LiDAR points along `ego_azimuth`
    (radians): it turns clockwise seen from above, once per LIDAR_PERIOD_US, and the sweep
    ends at its stamp pointing at LIDAR_SWEEP_END_AZIMUTH_DEG."""
    still_to_turn = np.mod(np.asarray(ego_azimuth) - np.radians(LIDAR_SWEEP_END_AZIMUTH_DEG), 2 * np.pi)
    return -still_to_turn / (2 * np.pi) * LIDAR_PERIOD_US * 1e-6


def sweep_column_azimuths(columns: int) -> np.ndarray:
    """Ego azimuth (radians) of each of a sweep's `columns` firings, in firing order: the
    centres of equal slices of one clockwise turn that ends at LIDAR_SWEEP_END_AZIMUTH_DEG."""
    still_to_turn = 1.0 - (np.arange(columns) + 0.5) / columns
    return np.radians(LIDAR_SWEEP_END_AZIMUTH_DEG) + 2 * np.pi * still_to_turn


def camera_trigger_offset_us(mount: SensorMount) -> int:
    """Cameras fire when the spinning LiDAR crosses their optical axis (nuScenes' trigger),
    so each one's stamp precedes the sweep's by the LiDAR's turn from its axis to the end."""
    return int(round(float(sweep_offset_s(mount.azimuth_rad())) * 1e6))
