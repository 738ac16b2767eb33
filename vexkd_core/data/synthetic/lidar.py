"""A ray-cast 32-beam spinning LiDAR (HDL-32E-like) over the synthetic world.

The sweep a stamp names ends at that stamp: the LiDAR turns clockwise once in 50 ms, and
each azimuth column fires at its own time on the clock the cameras are triggered by
(rig.sweep_offset_s), from where the ego is at that time, at objects where they are at that
time; its points are then ego-motion compensated to the sensor frame at the stamp, as
nuScenes' are. The ego's own body is in the scan, tree crowns and hedges are porous, and
each return reads the calibrated reflectivity of what it hit (materials.py); range noise
and dropout grow with range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actors import EgoRoute
from .city import KERB, WALKWAY, City
from .materials import (EGO_BODY_REFLECTANCE, GLASS_REFLECTANCE, GROUND_REFLECTANCE, PARTIAL_FILL, POROUS_KINDS,
                        return_intensity, surface_parts)
from .rig import (EGO_BODY_BOXES, LIDAR_ELEVATIONS_DEG, LIDAR_MAX_RANGE_M, LIDAR_PERIOD_US, sweep_column_azimuths,
                  sweep_offset_s)
from .streetscape import WALKWAY_HEIGHT_M
from .world import KIND_INDEX, KINDS, SceneSolids

KIND_NAMES = np.array(KINDS)
POROUS = [KIND_INDEX[kind] for kind in POROUS_KINDS]
GAP_FRACTION = 0.35  # beams that pass through a crown or hedge between its leaves
# What a ray hit, where it hit no solid (solids are indices >= 0).
_NOTHING, _GROUND, _EGO_BODY = -3, -2, -1


@dataclass(frozen=True)
class LidarSpec:
    azimuth_steps: int = 1084  # about 0.33 deg, ~34.7k rays per sweep like nuScenes
    max_range_m: float = LIDAR_MAX_RANGE_M
    # Returns down to the ego's own roof are kept, as nuScenes keeps them (the reason the
    # model's input drops points near the sensor: sweeps.MIN_POINT_DISTANCE_M).
    min_range_m: float = 0.3
    reflectivity_gain: float = 1.0  # this unit's calibration in this scene (conditions.py)


@dataclass
class _Hits:
    """The nearest surface along each ray (columns, beams) found so far."""

    t: np.ndarray
    target: np.ndarray  # index into SceneSolids, or _GROUND, _EGO_BODY, _NOTHING
    cosine: np.ndarray  # of the angle between the ray and the surface's normal
    ground_material: np.ndarray
    local: np.ndarray  # (columns, beams, 3): the hit in the solid's box frame, scaled to -1..1
    face_axis: np.ndarray  # the box axis of the face hit

    def keep_nearer(self, rays, t, target: int, cosine, face_axis, local=None) -> None:
        """Take the hits at `t` (inf: none) of the rays `rays` indexes where they are nearer."""
        nearer = t < self.t[rays]
        if not nearer.any():
            return
        self.t[rays] = np.where(nearer, t, self.t[rays])
        self.target[rays] = np.where(nearer, target, self.target[rays])
        self.cosine[rays] = np.where(nearer, cosine, self.cosine[rays])
        self.face_axis[rays] = np.where(nearer, face_axis, self.face_axis[rays])
        if local is not None:
            self.local[rays] = np.where(nearer[..., None], local, self.local[rays])


def _ego_frames(ego: EgoRoute, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    poses = np.array([ego.pose_at(t) for t in times])
    return poses[:, :2], poses[:, 2]


def cast_sweep(city: City, solids: SceneSolids, ego: EgoRoute, mount_translation: np.ndarray,
               mount_rotation: np.ndarray, mount_yaw_nominal: float, t: float,
               rng: np.random.Generator, spec: LidarSpec = LidarSpec()) -> np.ndarray:
    """The sweep ending at scene time `t`: (N, 5) float32 x, y, z, intensity, ring."""
    columns, beams = spec.azimuth_steps, len(LIDAR_ELEVATIONS_DEG)
    ego_azimuth = sweep_column_azimuths(columns)
    times = t + sweep_offset_s(ego_azimuth)
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

    hits = _cast_ground(city, origins, d_world)
    _cast_ego_body(np.asarray(mount_translation), d_ego, hits)
    _cast_solids(solids, origins, d_world, times, ego_yaw[columns // 2], spec, hits, rng)

    valid = (hits.t > spec.min_range_m) & (hits.t < spec.max_range_m)
    ranges = hits.t[valid] + rng.normal(0.0, 1.0, valid.sum()) * (0.015 + 0.0005 * hits.t[valid])
    reflectance, retro_reading = _reflectance(hits, valid, solids, rng)
    intensity = return_intensity(reflectance, retro_reading, hits.cosine[valid], spec.reflectivity_gain, rng)
    drop_probability = 0.02 + 0.25 * (ranges / spec.max_range_m) ** 2
    keep = rng.random(valid.sum()) >= drop_probability
    ring = np.broadcast_to(np.arange(beams)[None], (columns, beams))[valid]
    hit_world = np.broadcast_to(origins[:, None], (columns, beams, 3))[valid] + d_world[valid] * ranges[:, None]
    points = _in_sensor_frame_at(hit_world, ego.pose_at(t), mount_translation, mount_rotation)
    return np.concatenate([points, intensity[:, None], ring[:, None]], axis=1)[keep].astype(np.float32)


def _in_sensor_frame_at(world: np.ndarray, ego_pose: tuple[float, float, float], mount_translation: np.ndarray,
                        mount_rotation: np.ndarray) -> np.ndarray:
    """World points in the sensor's frame where the ego stands at `ego_pose`. nuScenes' sweeps
    are ego-motion compensated to the sensor frame at the sweep's stamp (NVIDIA NCore's
    nuScenes converter decompensates them for that reason), so every column goes through the
    ego pose at the stamp, not its own; moving objects stay where each column saw them."""
    x, y, yaw = ego_pose
    cos, sin = np.cos(yaw), np.sin(yaw)
    dx, dy = world[:, 0] - x, world[:, 1] - y
    ego = np.stack([cos * dx + sin * dy, -sin * dx + cos * dy, world[:, 2]], axis=-1)
    return (ego - np.asarray(mount_translation)) @ mount_rotation


def _cast_ground(city: City, origins: np.ndarray, d_world: np.ndarray) -> _Hits:
    """Road at z=0, walkways and kerbs raised: the first hits of the sweep's rays."""
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
    return _Hits(t=np.where(on_walkway, t_raised, t_road), target=np.where(downward, _GROUND, _NOTHING),
                 cosine=np.abs(dz), ground_material=np.where(on_walkway, raised_material, road_material),
                 local=np.zeros(dz.shape + (3,)), face_axis=np.full(dz.shape, 2))


def _slab_entry(o: np.ndarray, d: np.ndarray, half: np.ndarray):
    """Rays o + t d (box frame) against the box of half-size `half` at the origin: the ray
    parameters where they enter and leave it (enter > leave: missed), and the axis of the
    face they enter through."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (-half - o) * inverse
        t2 = (half - o) * inverse
    t_min, t_max = np.minimum(t1, t2), np.maximum(t1, t2)
    return t_min.max(axis=-1), t_max.min(axis=-1), t_min.argmax(axis=-1)


def _facing(d: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return np.abs(np.take_along_axis(d, axis[..., None], axis=-1)[..., 0])


def _cast_ego_body(mount_translation: np.ndarray, d_ego: np.ndarray, hits: _Hits) -> None:
    """The ego's own body (fixed in the ego frame, so the same rays every column)."""
    for low, high in EGO_BODY_BOXES:
        low, high = np.asarray(low), np.asarray(high)
        t_near, t_far, axis = _slab_entry(mount_translation - (low + high) / 2, d_ego, (high - low) / 2)
        hits.keep_nearer(np.s_[:, :], np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf), _EGO_BODY,
                         _facing(d_ego, axis), axis)


def _column_at(ego_azimuth: float, columns: int) -> float:
    """Fractional index of the column that fires along `ego_azimuth` (sweep_column_azimuths
    inverted through the sweep's clock)."""
    return (1.0 + float(sweep_offset_s(ego_azimuth)) / (LIDAR_PERIOD_US * 1e-6)) * columns - 0.5


def _cast_solids(solids: SceneSolids, origins, d_world, times, yaw_at_middle: float, spec: LidarSpec,
                 hits: _Hits, rng: np.random.Generator) -> None:
    """Every solid in range, against the rays that can reach it: the columns facing it and
    the beams whose elevation meets it."""
    columns = len(origins)
    middle_origin = origins[columns // 2]
    offsets = solids.centers_at(float(times[columns // 2]))[:, :2] - middle_origin[:2]
    distance = np.hypot(offsets[:, 0], offsets[:, 1])
    # Half a sweep before or after its middle, the ego and each solid have moved this far.
    half_sweep_s = (times[-1] - times[0]) / 2
    ego_travel = np.hypot(*(origins[-1, :2] - origins[0, :2])) / 2
    margin = 0.5 * np.hypot(solids.size_lwh[:, 0], solids.size_lwh[:, 1]) + ego_travel + \
        np.hypot(solids.velocity[:, 0], solids.velocity[:, 1]) * half_sweep_s + 0.5
    for index in np.flatnonzero(distance - margin < spec.max_range_m):
        if distance[index] <= margin[index]:
            rays = np.s_[:, :]
        else:
            half_angle = np.arcsin(margin[index] / distance[index])
            centre_col = _column_at(np.arctan2(offsets[index, 1], offsets[index, 0]) - yaw_at_middle, columns)
            half_cols = half_angle / (2 * np.pi) * columns + 1
            cols = np.arange(int(np.floor(centre_col - half_cols)), int(np.ceil(centre_col + half_cols)) + 1) % columns
            nearest, furthest = distance[index] - margin[index], distance[index] + margin[index]
            rays = (cols, _beams_meeting(solids.center[index, 2] - middle_origin[2], solids.size_lwh[index, 2],
                                         nearest, furthest))
        _intersect_solid(solids, index, rays, origins, d_world, times, hits, rng)


def _beams_meeting(centre_height: float, height: float, nearest: float, furthest: float) -> slice:
    """The beams (a slice: their elevations fall monotonically) that can meet a box whose
    centre stands `centre_height` above the sensor and that lies `nearest`..`furthest` away
    horizontally; half a degree spare for the mount's calibrated tilt."""
    top, bottom = centre_height + height / 2, centre_height - height / 2
    highest = np.degrees(max(np.arctan2(top, nearest), np.arctan2(top, furthest))) + 0.5
    lowest = np.degrees(min(np.arctan2(bottom, nearest), np.arctan2(bottom, furthest))) - 0.5
    inside = np.flatnonzero((LIDAR_ELEVATIONS_DEG <= highest) & (LIDAR_ELEVATIONS_DEG >= lowest))
    return slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)


def _intersect_solid(solids: SceneSolids, index: int, rays, origins, d_world, times, hits: _Hits,
                     rng: np.random.Generator) -> None:
    """Solid `index` (moving with the columns' times) against the rays `rays` indexes: a
    (columns, beams) pair of index arrays or slices."""
    cols = np.arange(len(origins))[rays[0]]
    d = d_world[rays]
    if d.size == 0:
        return
    centre = solids.center[index] + np.concatenate([solids.velocity[index] * times[cols][:, None],
                                                    np.zeros((len(cols), 1))], axis=1)
    c, s = np.cos(solids.yaw[index]), np.sin(solids.yaw[index])
    relative = origins[cols] - centre
    o = np.stack([c * relative[:, 0] + s * relative[:, 1], -s * relative[:, 0] + c * relative[:, 1],
                  relative[:, 2]], axis=-1)[:, None, :]
    d = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], axis=-1)
    half = solids.size_lwh[index] / 2.0
    t_near, t_far, axis = _slab_entry(o, d, half)
    if solids.kind[index] in POROUS:
        # Leaves return from anywhere in the first half of the crown, or let the beam through.
        entered = (t_near <= t_far) & (t_far > 0.0) & (rng.random(t_near.shape) >= GAP_FRACTION)
        t_near = np.maximum(t_near, 0.0) + 0.5 * rng.random(t_near.shape) * (t_far - np.maximum(t_near, 0.0))
    else:
        entered = (t_near <= t_far) & (t_near > 0.0)
    if not entered.any():
        return
    t = np.where(entered, t_near, np.inf)
    local = (o + d * np.where(entered, t_near, 0.0)[..., None]) / half
    hits.keep_nearer(rays, t, index, _facing(d, axis), axis, local)


def _reflectance(hits: _Hits, valid: np.ndarray, solids: SceneSolids,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(reflectance, retro-reflector reading or 0) of each valid return."""
    target = hits.target[valid]
    reflectance = np.where(target == _GROUND, GROUND_REFLECTANCE[hits.ground_material[valid]], EGO_BODY_REFLECTANCE)
    retro_reading = np.zeros(len(target))
    on_solid = np.flatnonzero(target >= 0)
    solid = target[on_solid]
    kind = KIND_NAMES[solids.kind[solid]]
    retro, glass = surface_parts(kind, hits.local[valid][on_solid], hits.face_axis[valid][on_solid])
    partial_fill = np.where(np.isin(kind, POROUS_KINDS), rng.uniform(*PARTIAL_FILL, len(solid)), 1.0)
    reflectance[on_solid] = np.where(glass, GLASS_REFLECTANCE, solids.reflectance[solid]) * partial_fill
    retro_reading[on_solid] = np.where(retro, solids.retro_reading[solid], 0.0)
    return reflectance, retro_reading
