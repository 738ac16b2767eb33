"""A ray-cast 32-beam spinning LiDAR (HDL-32E-like) over the synthetic world.

Each azimuth column fires at its own time within the 50 ms sweep, from where the ego is at
that time, at objects where they are at that time, and its points are reported in the
sensor frame as measured (not motion-compensated), like nuScenes. Range noise, dropout
that grows with range, and intensity by material (road paint brighter than asphalt,
retro-reflective cones brightest) make the returns realistic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actors import EgoRoute
from .city import KERB, WALKWAY, WALKWAY_HEIGHT_M, City
from .rig import LIDAR_ELEVATIONS_DEG, LIDAR_MAX_RANGE_M, LIDAR_PERIOD_US
from .world import KIND_INDEX, KINDS, SceneSolids

# Mean return intensity (0..255) by ground material (see city.py) and by solid kind.
GROUND_INTENSITY = np.array([5.0, 9.0, 70.0, 55.0, 18.0, 11.0, 25.0])
KIND_INTENSITY = np.array([{
    "building": 28, "wall": 22, "pole": 40, "trunk": 10, "foliage": 6, "car": 22, "truck": 25,
    "bus": 24, "trailer": 30, "construction": 35, "pedestrian": 12, "motorcycle": 20,
    "motorcycle_rider": 18, "bicycle": 15, "bicycle_rider": 14, "cone": 110, "barrier": 60,
}[kind] for kind in KINDS], dtype=np.float64)
FOLIAGE = KIND_INDEX["foliage"]
_NO_HIT = -2
_GROUND_HIT = -1


@dataclass(frozen=True)
class LidarSpec:
    azimuth_steps: int = 1084  # about 0.33 deg, ~34.7k rays per sweep like nuScenes
    max_range_m: float = LIDAR_MAX_RANGE_M
    min_range_m: float = 1.0
    sweep_s: float = LIDAR_PERIOD_US * 1e-6


def _ego_frames(ego: EgoRoute, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    poses = np.array([ego.pose_at(t) for t in times])
    return poses[:, :2], poses[:, 2]


def cast_sweep(city: City, solids: SceneSolids, ego: EgoRoute, mount_translation: np.ndarray,
               mount_rotation: np.ndarray, mount_yaw_nominal: float, t: float,
               rng: np.random.Generator, spec: LidarSpec = LidarSpec()) -> np.ndarray:
    """One sweep centred on scene time `t`: (N, 5) float32 x, y, z, intensity, ring."""
    columns, beams = spec.azimuth_steps, len(LIDAR_ELEVATIONS_DEG)
    fraction = (np.arange(columns) + 0.5) / columns
    times = t + spec.sweep_s * (fraction - 0.5)
    # Clockwise from the rear, so the front is scanned at the sweep's timestamp.
    ego_azimuth = np.pi - 2.0 * np.pi * fraction
    sensor_azimuth = ego_azimuth - mount_yaw_nominal
    elevation = np.radians(LIDAR_ELEVATIONS_DEG)
    d_sensor = np.stack([np.cos(elevation)[None] * np.cos(sensor_azimuth)[:, None],
                         np.cos(elevation)[None] * np.sin(sensor_azimuth)[:, None],
                         np.broadcast_to(np.sin(elevation)[None], (columns, beams))], axis=-1)
    d_ego = d_sensor @ mount_rotation.T
    ego_xy, ego_yaw = _ego_frames(ego, times)
    cos, sin = np.cos(ego_yaw)[:, None], np.sin(ego_yaw)[:, None]
    d_world = np.stack([cos * d_ego[..., 0] - sin * d_ego[..., 1],
                        sin * d_ego[..., 0] + cos * d_ego[..., 1], d_ego[..., 2]], axis=-1)
    origins = np.stack([ego_xy[:, 0] + cos[:, 0] * mount_translation[0] - sin[:, 0] * mount_translation[1],
                        ego_xy[:, 1] + sin[:, 0] * mount_translation[0] + cos[:, 0] * mount_translation[1],
                        np.full(columns, mount_translation[2])], axis=-1)

    best_t, hit, cosine, ground_material = _cast_ground(city, origins, d_world)
    _cast_boxes(solids, origins, d_world, times, ego_yaw[columns // 2], spec, best_t, hit, cosine)

    valid = (best_t > spec.min_range_m) & (best_t < spec.max_range_m)
    ranges = best_t[valid] + rng.normal(0.0, 1.0, valid.sum()) * (0.015 + 0.0005 * best_t[valid])
    hit_valid = hit[valid]
    base = np.where(hit_valid == _GROUND_HIT, GROUND_INTENSITY[ground_material[valid]],
                    KIND_INTENSITY[np.maximum(hit_valid, 0)])
    intensity = base * (0.5 + 0.5 * cosine[valid]) * rng.lognormal(0.0, 0.25, valid.sum())
    drop_probability = 0.02 + 0.25 * (ranges / spec.max_range_m) ** 2 + 0.35 * (hit_valid == FOLIAGE)
    keep = rng.random(valid.sum()) >= drop_probability
    ring = np.broadcast_to(np.arange(beams)[None], (columns, beams))[valid]
    points = d_sensor[valid] * ranges[:, None]
    return np.concatenate([points, np.clip(intensity, 0, 255)[:, None], ring[:, None]],
                          axis=1)[keep].astype(np.float32)


def _cast_ground(city: City, origins: np.ndarray, d_world: np.ndarray):
    """Road at z=0, walkways and kerbs raised: ray parameter, hit kind, cosine, material."""
    dz = d_world[..., 2]
    downward = dz < -1e-6
    safe_dz = np.where(downward, dz, -1.0)
    oz = origins[:, 2:3]
    t_road = np.where(downward, -oz / safe_dz, np.inf)
    t_raised = np.where(downward, (WALKWAY_HEIGHT_M - oz) / safe_dz, np.inf)
    finite_road = np.where(np.isfinite(t_road), t_road, 0.0)
    finite_raised = np.where(np.isfinite(t_raised), t_raised, 0.0)
    road_xy = origins[:, None, :2] + d_world[..., :2] * finite_road[..., None]
    raised_xy = origins[:, None, :2] + d_world[..., :2] * finite_raised[..., None]
    road_material = city.material_at(road_xy[..., 0], road_xy[..., 1])
    raised_material = city.material_at(raised_xy[..., 0], raised_xy[..., 1])
    on_walkway = downward & np.isin(raised_material, (WALKWAY, KERB))
    best_t = np.where(on_walkway, t_raised, t_road)
    material = np.where(on_walkway, raised_material, road_material)
    hit = np.where(downward, _GROUND_HIT, _NO_HIT)
    return best_t, hit, np.abs(dz), material


def _cast_boxes(solids: SceneSolids, origins, d_world, times, yaw_at_centre, spec: LidarSpec,
                best_t, hit, cosine) -> None:
    """Update best_t/hit/cosine in place with the nearest box hit of each ray."""
    columns = len(origins)
    centre_origin = origins[columns // 2]
    centers_now = solids.centers_at(float(times[columns // 2]))
    offsets = centers_now[:, :2] - centre_origin[:2]
    distance = np.hypot(offsets[:, 0], offsets[:, 1])
    radius = 0.5 * np.hypot(solids.size_lwh[:, 0], solids.size_lwh[:, 1])
    for index in np.flatnonzero(distance - radius < spec.max_range_m):
        margin = radius[index] + 1.0  # the ego moves up to ~0.5 m during a sweep
        if distance[index] <= margin:
            cols = np.arange(columns)
        else:
            half_angle = np.arcsin(margin / distance[index])
            azimuth = np.arctan2(offsets[index, 1], offsets[index, 0]) - yaw_at_centre
            centre_col = ((np.pi - azimuth) / (2 * np.pi)) * columns - 0.5
            half_cols = half_angle / (2 * np.pi) * columns + 1
            cols = np.arange(int(np.floor(centre_col - half_cols)), int(np.ceil(centre_col + half_cols)) + 1) % columns
        _intersect_box(solids, index, cols, origins, d_world, times, best_t, hit, cosine)


def _intersect_box(solids: SceneSolids, index: int, cols, origins, d_world, times, best_t, hit, cosine) -> None:
    centre = solids.center[index] + np.concatenate([solids.velocity[index] * times[cols][:, None],
                                                    np.zeros((len(cols), 1))], axis=1)
    c, s = np.cos(solids.yaw[index]), np.sin(solids.yaw[index])
    relative = origins[cols] - centre
    o = np.stack([c * relative[:, 0] + s * relative[:, 1], -s * relative[:, 0] + c * relative[:, 1],
                  relative[:, 2]], axis=-1)[:, None, :]
    d = d_world[cols]
    d = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], axis=-1)
    half = solids.size_lwh[index] / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (-half - o) * inverse
        t2 = (half - o) * inverse
    t_min, t_max = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = t_min.max(axis=-1), t_max.min(axis=-1)
    normal_axis = t_min.argmax(axis=-1)
    region_t = best_t[cols]
    better = (t_near <= t_far) & (t_near > 0.0) & (t_near < region_t)
    if not better.any():
        return
    best_t[cols] = np.where(better, t_near, region_t)
    hit[cols] = np.where(better, solids.kind[index], hit[cols])
    facing = np.abs(np.take_along_axis(d, normal_axis[..., None], axis=-1)[..., 0])
    cosine[cols] = np.where(better, facing, cosine[cols])
