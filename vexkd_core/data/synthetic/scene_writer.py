"""Simulate one scene and write its sensor files; return its nuScenes table records."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vexkd_core.geometry import quaternion_to_matrix, yaw_to_quaternion

from .actors import Scenario, populate_scene
from .camera import render
from .city import City
from .conditions import SensorConditions, draw_conditions
from .lidar import LidarSpec, cast_sweep
from .rig import (CAMERA_CHANNELS, CAMERA_PERIOD_US, KEYFRAME_PERIOD_US, LIDAR_CHANNEL, LIDAR_PERIOD_US,
                  MOUNT_BY_CHANNEL, calibrated_mount, camera_trigger_offset_us, intrinsics)
from .taxonomy import visibility_token
from .world import SceneSolids, scene_solids

JPEG_QUALITY = 90


@dataclass(frozen=True)
class SceneJob:
    index: int
    name: str
    location: str
    log_name: str
    start_us: int
    samples: int
    lidar_sweeps: int  # sweeps kept before each key frame (after the first)
    camera_sweeps: int  # frames kept after each key frame (before the last), per camera
    image_size: tuple[int, int]
    azimuth_steps: int
    seed: int


def make_token(*parts) -> str:
    """Deterministic 32-hex token, like nuScenes tokens."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Capture:
    channel: str
    timestamp: int
    key_index: int  # index of the key frame this sample_data belongs to
    is_key_frame: bool


def _capture_schedule(job: SceneJob) -> list[_Capture]:
    captures = []
    for k in range(job.samples):
        key_us = job.start_us + k * KEYFRAME_PERIOD_US
        captures.append(_Capture(LIDAR_CHANNEL, key_us, k, True))
        if k > 0:
            captures += [_Capture(LIDAR_CHANNEL, key_us - j * LIDAR_PERIOD_US, k, False)
                         for j in range(1, job.lidar_sweeps + 1)]
        for channel in CAMERA_CHANNELS:
            trigger = key_us + camera_trigger_offset_us(MOUNT_BY_CHANNEL[channel])
            captures.append(_Capture(channel, trigger, k, True))
            if k < job.samples - 1:  # frames before the next key frame belong to it
                captures += [_Capture(channel, trigger + i * CAMERA_PERIOD_US, k + 1, False)
                             for i in range(1, job.camera_sweeps + 1)]
    return sorted(captures, key=lambda c: (c.timestamp, c.channel))


def _ego_matrix(pose: tuple[float, float, float]) -> np.ndarray:
    x, y, yaw = pose
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix(yaw_to_quaternion(yaw))
    matrix[:2, 3] = (x, y)
    return matrix


def _points_in_boxes(points: np.ndarray, centres: np.ndarray, rotations: np.ndarray, sizes_lwh: np.ndarray) -> np.ndarray:
    """Count of points inside each box (inclusive bounds, as nuscenes-devkit's points_in_box)."""
    counts = np.zeros(len(centres), dtype=np.int64)
    xyz = points[:, :3].astype(np.float64)
    for i in range(len(centres)):
        local = (xyz - centres[i]) @ rotations[i]
        counts[i] = np.count_nonzero(np.all(np.abs(local) <= sizes_lwh[i] / 2, axis=1))
    return counts


@dataclass
class SceneSetup:
    """What a scene's sensors are simulated from; rebuilt identically from (job, city)."""

    scenario: Scenario
    solids: SceneSolids
    # channel -> (calibrated_sensor token, translation, rotation quaternion wxyz, K or None)
    calibration: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]
    conditions: SensorConditions
    rng: np.random.Generator  # continues with the sensor noise

    def sensor_to_world(self, channel: str, t: float) -> np.ndarray:
        """4x4 pose of a sensor at scene time t (ego pose at t composed with the calibration)."""
        _, translation, rotation, _ = self.calibration[channel]
        sensor_to_ego = np.eye(4)
        sensor_to_ego[:3, :3], sensor_to_ego[:3, 3] = quaternion_to_matrix(rotation), translation
        return _ego_matrix(self.scenario.ego.pose_at(t)) @ sensor_to_ego


def setup_scene(job: SceneJob, city: City) -> SceneSetup:
    rng = np.random.default_rng([job.seed, 1, job.index])
    scenario = populate_scene(city, rng, (job.samples - 1) * KEYFRAME_PERIOD_US * 1e-6)
    calibration = {}
    for channel in (LIDAR_CHANNEL,) + CAMERA_CHANNELS:
        translation, rotation = calibrated_mount(MOUNT_BY_CHANNEL[channel], rng)
        k = intrinsics(MOUNT_BY_CHANNEL[channel], job.image_size) if channel != LIDAR_CHANNEL else None
        calibration[channel] = (make_token(job.seed, "calibrated_sensor", job.index, channel), translation, rotation, k)
    solids = scene_solids(city, scenario, rng)
    conditions = draw_conditions(scenario.lighting, scenario.ego.speed, rng)
    return SceneSetup(scenario, solids, calibration, conditions, rng)


def render_camera(setup: SceneSetup, city: City, job: SceneJob, channel: str, timestamp: int,
                  count_silhouettes: bool = False):
    """The camera frame a scene's `channel` captures at `timestamp` (microseconds)."""
    t = (timestamp - job.start_us) * 1e-6
    k_matrix = setup.calibration[channel][3]
    return render(city, setup.solids, len(setup.scenario.actors), setup.scenario.lighting,
                  setup.sensor_to_world(channel, t), k_matrix, job.image_size, t, setup.rng,
                  count_silhouettes=count_silhouettes, response=setup.conditions.camera)


def simulate_scene(job: SceneJob, city: City, dataroot: Path) -> dict[str, list]:
    setup = setup_scene(job, city)
    scenario, solids, rng = setup.scenario, setup.solids, setup.rng
    tables: dict[str, list] = {name: [] for name in (
        "log", "scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "instance", "sample_annotation")}
    log_token = make_token(job.seed, "log", job.index)
    tables["log"].append({"token": log_token, "logfile": job.log_name, "vehicle": job.log_name.split("-")[0],
                          "date_captured": "-".join(job.log_name.split("-")[1:4]), "location": job.location})
    for channel, (token, translation, rotation, k) in setup.calibration.items():
        tables["calibrated_sensor"].append({
            "token": token, "sensor_token": make_token("sensor", channel), "translation": translation.tolist(),
            "rotation": rotation.tolist(), "camera_intrinsic": [] if k is None else k.tolist()})

    sample_tokens = [make_token(job.seed, "sample", job.index, k) for k in range(job.samples)]
    for k, token in enumerate(sample_tokens):
        tables["sample"].append({"token": token, "timestamp": job.start_us + k * KEYFRAME_PERIOD_US,
                                 "prev": sample_tokens[k - 1] if k > 0 else "",
                                 "next": sample_tokens[k + 1] if k + 1 < job.samples else "",
                                 "scene_token": make_token(job.seed, "scene", job.index)})
    key_lidar: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # key index -> (points, ego matrix)
    visible = np.zeros((job.samples, len(scenario.actors)))
    silhouette = np.zeros((job.samples, len(scenario.actors)))
    previous_by_channel: dict[str, dict] = {}
    for capture in _capture_schedule(job):
        t = (capture.timestamp - job.start_us) * 1e-6
        cs_token, translation, rotation_q, _ = setup.calibration[capture.channel]
        folder = "samples" if capture.is_key_frame else "sweeps"
        stem = f"{folder}/{capture.channel}/{job.log_name}__{capture.channel}__{capture.timestamp}"
        if capture.channel == LIDAR_CHANNEL:
            points = cast_sweep(city, solids, scenario.ego, translation, quaternion_to_matrix(rotation_q),
                                np.radians(MOUNT_BY_CHANNEL[LIDAR_CHANNEL].yaw_deg), t, rng,
                                LidarSpec(azimuth_steps=job.azimuth_steps,
                                          reflectivity_gain=setup.conditions.lidar_gain))
            filename, width, height = f"{stem}.pcd.bin", 0, 0
            (dataroot / filename).write_bytes(points.tobytes())
            if capture.is_key_frame:
                key_lidar[capture.key_index] = (points, _ego_matrix(scenario.ego.pose_at(t)))
        else:
            frame = render_camera(setup, city, job, capture.channel, capture.timestamp,
                                  count_silhouettes=capture.is_key_frame)
            if capture.is_key_frame:
                silhouette[capture.key_index] += frame.silhouette_px
                visible[capture.key_index] += np.bincount(frame.actor[frame.actor >= 0],
                                                          minlength=len(scenario.actors))
            filename, (width, height) = f"{stem}.jpg", job.image_size
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            (dataroot / filename).write_bytes(encoded.tobytes())
        token = make_token(job.seed, "sample_data", job.index, capture.channel, capture.timestamp)
        record = {"token": token, "sample_token": sample_tokens[capture.key_index], "ego_pose_token": token,
                  "calibrated_sensor_token": cs_token, "timestamp": capture.timestamp,
                  "fileformat": "pcd" if capture.channel == LIDAR_CHANNEL else "jpg",
                  "is_key_frame": capture.is_key_frame, "height": height, "width": width,
                  "filename": filename, "prev": "", "next": ""}
        previous = previous_by_channel.get(capture.channel)
        if previous is not None:
            previous["next"], record["prev"] = token, previous["token"]
        previous_by_channel[capture.channel] = record
        tables["sample_data"].append(record)
        x, y, yaw = scenario.ego.pose_at(t)
        tables["ego_pose"].append({"token": token, "timestamp": capture.timestamp,
                                   "rotation": yaw_to_quaternion(yaw).tolist(), "translation": [x, y, 0.0]})

    _annotate(job, scenario, setup.calibration[LIDAR_CHANNEL], key_lidar, visible, silhouette, sample_tokens, tables)
    tables["scene"].append({
        "token": make_token(job.seed, "scene", job.index), "log_token": log_token, "nbr_samples": job.samples,
        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1], "name": job.name,
        "description": f"synthetic {job.location}, {scenario.density} traffic, {scenario.lighting.name}, "
                       f"ego {scenario.ego.speed:.1f} m/s"})
    return tables


def _annotate(job: SceneJob, scenario: Scenario, lidar_calibration, key_lidar, visible, silhouette,
              sample_tokens, tables) -> None:
    _, lidar_translation, lidar_rotation_q, _ = lidar_calibration
    lidar_rotation = quaternion_to_matrix(lidar_rotation_q)
    actors = scenario.actors
    sizes_lwh = np.array([a.size_lwh for a in actors])
    for a, actor in enumerate(actors):
        tokens = [make_token(job.seed, "annotation", job.index, a, k) for k in range(job.samples)]
        tables["instance"].append({
            "token": make_token(job.seed, "instance", job.index, a), "category_token": make_token("category", actor.category),
            "nbr_annotations": job.samples, "first_annotation_token": tokens[0], "last_annotation_token": tokens[-1]})
    for k in range(job.samples):
        t = k * KEYFRAME_PERIOD_US * 1e-6
        points, ego = key_lidar[k]
        centres_world = np.array([a.center_at(t) for a in actors])
        box_rotations = np.array([quaternion_to_matrix(yaw_to_quaternion(a.yaw)) for a in actors])
        # Global -> ego -> LiDAR, as the devkit moves a box into a sensor frame.
        world_to_lidar = lidar_rotation.T @ ego[:3, :3].T
        centres = (centres_world - ego[:3, 3]) @ ego[:3, :3] @ lidar_rotation - lidar_translation @ lidar_rotation
        rotations = np.einsum("ij,njk->nik", world_to_lidar, box_rotations)
        counts = _points_in_boxes(points, centres, rotations, sizes_lwh)
        fractions = np.divide(visible[k], silhouette[k], out=np.zeros(len(actors)), where=silhouette[k] > 0)
        for a, actor in enumerate(actors):
            token = make_token(job.seed, "annotation", job.index, a, k)
            tables["sample_annotation"].append({
                "token": token, "sample_token": sample_tokens[k],
                "instance_token": make_token(job.seed, "instance", job.index, a),
                "visibility_token": visibility_token(float(fractions[a])),
                "attribute_tokens": [] if actor.attribute is None else [make_token("attribute", actor.attribute)],
                "translation": centres_world[a].tolist(),
                "size": [float(actor.size_lwh[1]), float(actor.size_lwh[0]), float(actor.size_lwh[2])],
                "rotation": yaw_to_quaternion(actor.yaw).tolist(),
                "prev": make_token(job.seed, "annotation", job.index, a, k - 1) if k > 0 else "",
                "next": make_token(job.seed, "annotation", job.index, a, k + 1) if k + 1 < job.samples else "",
                "num_lidar_pts": int(counts[a]), "num_radar_pts": 0})
