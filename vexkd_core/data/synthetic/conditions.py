"""What differs from scene to scene besides the street: the light, and how the sensors
respond to it (camera exposure, glare and blur; the LiDAR unit's reflectivity calibration)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lighting:
    name: str
    sun_direction: tuple[float, float, float]  # towards the sun, world frame
    ambient: float
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]


LIGHTINGS = (
    Lighting("sunny", (0.4, 0.3, 0.87), 0.45, (70, 130, 210), (185, 210, 235)),
    Lighting("overcast", (0.1, 0.2, 0.97), 0.75, (150, 155, 165), (200, 202, 208)),
    Lighting("dusk", (-0.8, 0.2, 0.25), 0.35, (40, 45, 90), (230, 140, 90)),
)

# nuScenes cameras (nuScenes paper): Basler acA1600-60gc, Bayer8 sensor, auto exposure with
# the exposure time capped at 20 ms, JPEG. Auto exposure keeps the sky from saturating, so
# the street comes out darker than a render lit to fill the range, and at dusk the 20 ms cap
# leaves frames darker still and smeared by the ego's motion. Per lighting: the range of the
# gain on rendered radiance and of the exposure time (ms).
EXPOSURE_BY_LIGHTING = {"sunny": ((0.65, 0.9), (0.5, 3.0)), "overcast": ((0.7, 0.95), (2.0, 8.0)),
                        "dusk": ((0.45, 0.7), (20.0, 20.0))}
DEMOSAIC_BLUR_PX = 1.0  # Bayer demosaicing and the lens, in pixels of the 1600-wide image
TYPICAL_DEPTH_M = 10.0  # what a camera mostly sees; sets how far the ego's motion smears it
FOCAL_PX = 1260.0  # the nuScenes side cameras' focal length at 1600 px (rig.MOUNTS)


@dataclass(frozen=True)
class CameraResponse:
    """How a scene's cameras turn rendered radiance (0..255) into pixel values; the defaults
    leave a render as it is."""

    exposure: float = 1.0  # gain
    flare: float = 0.0  # veiling glare: the level black is lifted to (lower contrast)
    blur_sigma_px: float = 0.0  # Gaussian blur, in pixels of a 1600-wide image


@dataclass(frozen=True)
class SensorConditions:
    camera: CameraResponse
    lidar_gain: float  # this LiDAR unit's calibrated reflectivity against the nominal one


def draw_conditions(lighting: Lighting, ego_speed: float, rng: np.random.Generator) -> SensorConditions:
    """One scene's sensor response, drawn for its light and the ego's speed."""
    gain_range, exposure_ms_range = EXPOSURE_BY_LIGHTING[lighting.name]
    exposure_s = rng.uniform(*exposure_ms_range) * 1e-3
    # A point at TYPICAL_DEPTH_M beside the ego moves FOCAL_PX * speed * t / depth pixels
    # during the exposure; a uniform smear of length L has the spread of a Gaussian of L / sqrt(12).
    smear_px = FOCAL_PX * ego_speed * exposure_s / TYPICAL_DEPTH_M
    camera = CameraResponse(exposure=float(rng.uniform(*gain_range)), flare=float(rng.uniform(4.0, 16.0)),
                            blur_sigma_px=float(np.hypot(DEMOSAIC_BLUR_PX, smear_px / np.sqrt(12.0))))
    # Units differ in calibration, and wet or dirty optics dim every return.
    return SensorConditions(camera, lidar_gain=float(rng.lognormal(0.0, 0.15)))
