"""The synthetic world follows published facts about nuScenes and its sensors: the cameras
fire as the LiDAR sweeps past them and before its stamp, the LiDAR reaches 100 m, sees the
ego's own body and reads calibrated reflectivity, object sizes spread about the nuScenes
class means, the streets have trees and tall buildings, and each scene's cameras expose and
blur differently."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.open_ground import OPEN_GROUND, StandingEgo, single_box_world
from vexkd_core.data.synthetic.camera import render
from vexkd_core.data.synthetic.city import LOCATIONS, build_city
from vexkd_core.data.synthetic.conditions import LIGHTINGS, CameraResponse, draw_conditions
from vexkd_core.data.synthetic.lidar import LidarSpec, cast_sweep
from vexkd_core.data.synthetic.materials import solid_materials
from vexkd_core.data.synthetic.rig import (CAMERA_CHANNELS, EGO_BODY_BOXES, MOUNT_BY_CHANNEL, camera_trigger_offset_us,
                                          intrinsics)
from vexkd_core.data.synthetic.sizes import MEAN_SIZE_LWH, draw_size
from vexkd_core.data.synthetic.world import KIND_INDEX, SceneSolids

pytestmark = pytest.mark.unit

LIDAR = MOUNT_BY_CHANNEL["LIDAR_TOP"]


def sweep(solids: SceneSolids, spec: LidarSpec = LidarSpec(), seed: int = 0) -> np.ndarray:
    """A sweep ending at t = 0 from an ego standing on open ground, points in the ego frame
    relative to the ego, and their intensities: (N, 4)."""
    x, y = OPEN_GROUND
    cloud = cast_sweep(build_city(LOCATIONS[0], seed=0), solids, StandingEgo(x, y), np.array(LIDAR.translation),
                       LIDAR.rotation(), np.radians(LIDAR.yaw_deg), 0.0, np.random.default_rng(seed), spec)
    return np.column_stack([cloud[:, :3] @ LIDAR.rotation().T + LIDAR.translation, cloud[:, 3]])


def world_of(*rows) -> SceneSolids:
    """Boxes (kind, centre relative to the ego, size lwh, colour), with materials drawn as a scene's."""
    x, y = OPEN_GROUND
    kinds = [row[0] for row in rows]
    colors = np.array([[row[3], (20, 20, 20)] for row in rows], np.uint8)
    reflectance, retro = solid_materials(kinds, colors, np.random.default_rng(0))
    return SceneSolids(np.array([np.add(row[1], (x, y, 0.0)) for row in rows], float),
                       np.array([row[2] for row in rows], float), np.zeros(len(rows)), np.zeros((len(rows), 2)),
                       np.array([KIND_INDEX[k] for k in kinds]), np.arange(len(rows)), colors, reflectance, retro)


def inside(points: np.ndarray, centre, size, grow: float = 0.05) -> np.ndarray:
    return np.all(np.abs(points[:, :3] - centre) <= np.asarray(size) / 2 + grow, axis=1)


# nuScenes v1.0-mini, the first sample of scene-0061: each sensor's file is
# n015-2018-07-24-11-22-45+0800__<CHANNEL>__<timestamp_us>.
NUSCENES_FIRST_SAMPLE_US = {
    "LIDAR_TOP": 1532402927647951, "CAM_FRONT_LEFT": 1532402927604844, "CAM_FRONT": 1532402927612460,
    "CAM_FRONT_RIGHT": 1532402927620339, "CAM_BACK_RIGHT": 1532402927627893, "CAM_BACK": 1532402927637525,
    "CAM_BACK_LEFT": 1532402927647423}


def test_cameras_fire_before_the_lidar_stamp_at_the_nuscenes_offsets(tiny_nusc):
    real = {channel: NUSCENES_FIRST_SAMPLE_US[channel] - NUSCENES_FIRST_SAMPLE_US["LIDAR_TOP"]
            for channel in CAMERA_CHANNELS}
    for sample in tiny_nusc.sample:
        lidar = tiny_nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["timestamp"]
        offsets = {channel: tiny_nusc.get("sample_data", sample["data"][channel])["timestamp"] - lidar
                   for channel in CAMERA_CHANNELS}
        for channel in CAMERA_CHANNELS:  # the per-vehicle calibration leaves the trigger as it is
            assert abs(offsets[channel] - real[channel]) <= 1000, (channel, offsets[channel], real[channel])
        assert max(offsets.values()) < 0 and max(offsets, key=offsets.get) != "CAM_FRONT"


@pytest.mark.parametrize("channel", CAMERA_CHANNELS)
def test_the_lidar_column_along_a_camera_axis_fires_at_its_trigger(channel):
    """A target crossing the camera's axis at 80 m/s just as the camera fires: the LiDAR sees
    it centred on that axis, so the column there fired then (1 ms off: 8 cm aside)."""
    yaw = np.radians(MOUNT_BY_CHANNEL[channel].yaw_deg)
    along, across = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
    speed, trigger_s = 80.0, camera_trigger_offset_us(MOUNT_BY_CHANNEL[channel]) * 1e-6
    on_axis = np.array(LIDAR.translation[:2]) + 12.0 * along
    start = on_axis - across * speed * trigger_s  # where it is at t = 0, the sweep's end
    target = single_box_world((*(start + OPEN_GROUND), 1.0), size=(0.4, 1.0, 2.0), velocity=across * speed, yaw=yaw)
    points = sweep(target, LidarSpec(azimuth_steps=2168))
    relative = points[:, :2] - on_axis
    on_target = (np.abs(relative @ along) < 0.6) & (np.abs(relative @ across) < 1.0) & (points[:, 2] > 0.2)
    assert on_target.sum() > 50
    assert abs((relative[on_target] @ across).mean()) < speed * 1e-3


class DrivingEgo:
    """An ego driving along +x at `speed` m/s through OPEN_GROUND at t = 0."""

    def __init__(self, speed: float):
        self.speed = speed

    def pose_at(self, t):
        return (OPEN_GROUND[0] + self.speed * t, OPEN_GROUND[1], 0.0)


def test_sweeps_are_ego_motion_compensated_to_the_stamp():
    """nuScenes' sweeps are compensated to the sensor frame at the stamp: a pole on the left,
    fired ~48 ms before the stamp, is where it stands relative to the ego *at the stamp*,
    not 0.7 m off as a driving ego's uncompensated column would put it."""
    x, y = OPEN_GROUND
    pole_ego = np.array([0.0, 10.0, 2.0])  # relative to the ego's position at the stamp
    pole = world_of(("pole", tuple(pole_ego), (0.3, 0.3, 4.0), (120, 120, 120)))
    cloud = cast_sweep(build_city(LOCATIONS[0], seed=0), pole, DrivingEgo(15.0), np.array(LIDAR.translation),
                       LIDAR.rotation(), np.radians(LIDAR.yaw_deg), 0.0, np.random.default_rng(0),
                       LidarSpec(azimuth_steps=2168))
    points = cloud[:, :3] @ LIDAR.rotation().T + LIDAR.translation
    on_pole = inside(points, pole_ego, (1.6, 1.6, 4.0)) & (points[:, 2] > 0.5)
    assert on_pole.sum() > 20
    assert abs(points[on_pole, 0].mean() - pole_ego[0]) < 0.1


def test_the_ego_body_is_in_the_scan():
    """The roof under the LiDAR returns thousands of points within 1 m (8,220 in a nuScenes
    v1.0-mini key frame), the body more beyond; none of them is anywhere else."""
    points = sweep(single_box_world((OPEN_GROUND[0] + 900.0, OPEN_GROUND[1], 0.8)))
    distance = np.linalg.norm(points[:, :3] - LIDAR.translation, axis=1)
    low, high = np.array(EGO_BODY_BOXES).transpose(1, 0, 2)
    on_body = np.any([inside(points, (lo + hi) / 2, hi - lo) for lo, hi in zip(low, high)], axis=0)
    assert (distance < 1.0).sum() > 5000 and on_body[distance < 1.0].all()
    assert (on_body & (distance >= 1.0)).sum() > 100


@pytest.mark.parametrize("distance, returns", [(95.0, True), (105.0, False)])
def test_returns_reach_100_m(distance, returns):
    """The HDL-32E's datasheet range: a wall 95 m away is seen, one 105 m away is not."""
    wall = (distance + LIDAR.translation[0], 0.0, 10.0)
    points = sweep(world_of(("building", wall, (1.0, 60.0, 20.0), (150, 150, 150))))
    assert (inside(points, wall, (1.0, 60.0, 20.0), grow=0.5).sum() > 100) == returns


def test_intensity_is_calibrated_reflectivity():
    """Diffuse surfaces read 0..100 by reflectance, retro-reflectors 101..255 (HDL-32E):
    sign faces and cone collars high, dark paint, vegetation and barriers low."""
    boxes = {"white car": ("car", (10.0, 0.0, 0.8), (4.0, 2.0, 1.6), (235, 235, 235)),
             "black car": ("car", (-10.0, 0.0, 0.8), (4.0, 2.0, 1.6), (25, 25, 30)),
             "cone": ("cone", (0.5, 6.0, 0.5), (0.4, 0.4, 1.0), (250, 105, 10)),
             "barrier": ("barrier", (0.5, -6.0, 0.5), (0.5, 2.5, 1.0), (210, 25, 25)),
             "crown": ("foliage", (8.0, 8.0, 6.0), (5.0, 5.0, 4.0), (40, 110, 40)),
             "sign": ("sign", (-6.0, 6.0, 2.6), (0.6, 0.6, 0.6), (30, 80, 170))}
    points = sweep(world_of(*boxes.values()))
    reading = {name: points[inside(points, row[1], row[2]), 3] for name, row in boxes.items()}
    assert all(len(values) > 10 for values in reading.values()), {k: len(v) for k, v in reading.items()}
    assert (reading["sign"] > 100).all() and (reading["cone"] > 100).any() and (reading["cone"] <= 100).any()
    assert reading["barrier"].max() <= 100 and reading["crown"].max() <= 100
    for car in ("white car", "black car"):  # their licence plates are retro-reflective
        assert 0 < (reading[car] > 100).sum() < 0.1 * len(reading[car]), car
    assert np.median(reading["black car"]) < np.median(reading["white car"]) / 3
    assert reading["crown"].mean() < 20 and np.median(reading["barrier"]) < np.median(reading["white car"])


def test_sizes_spread_about_the_nuscenes_class_means():
    rng = np.random.default_rng(0)
    draws = {category: np.array([draw_size(category, rng) for _ in range(2000)]) for category in MEAN_SIZE_LWH}
    for category, sizes in draws.items():
        np.testing.assert_allclose(sizes.mean(axis=0), MEAN_SIZE_LWH[category], rtol=0.05, err_msg=category)
    trucks = draws["vehicle.truck"][:, 0]
    assert trucks.min() < 5.0 and 0.03 < (trucks > 10.0).mean() < 0.2  # pick-ups to 10 m+ lorries
    assert draws["vehicle.trailer"][:, 0].max() > 15.0 and draws["vehicle.bus.rigid"][:, 0].max() > 12.5
    assert draws["vehicle.bus.rigid"][:, 2].max() > 4.2  # double-deckers


def test_streets_have_trees_and_buildings_above_them():
    """Upward beams meet crowns, street lights and buildings: more than 4 % of a street's
    returns come from above 3 m over the sensor (under 3 % before there were any)."""
    from vexkd_core.data.synthetic.scene_writer import setup_scene
    from vexkd_core.data.synthetic.writer import SynthConfig, _city, scene_jobs
    from vexkd_core.geometry import quaternion_to_matrix

    high = []
    for job in scene_jobs(SynthConfig(out=Path("unused"), scenes=4, val_scenes=1, azimuth_steps=542)):
        city = _city(job.location, job.seed)
        setup = setup_scene(job, city)
        _, translation, rotation, _ = setup.calibration["LIDAR_TOP"]
        cloud = cast_sweep(city, setup.solids, setup.scenario.ego, translation, quaternion_to_matrix(rotation),
                           np.radians(LIDAR.yaw_deg), 1.0, setup.rng, LidarSpec(azimuth_steps=542))
        high.append((cloud[:, 2] > 3.0).mean())
    assert np.mean(high) > 0.04, high


def test_each_scene_exposes_and_blurs_its_cameras_its_own_way():
    city = build_city(LOCATIONS[0], seed=0)
    x, y = OPEN_GROUND
    mount = MOUNT_BY_CHANNEL["CAM_FRONT"]
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = mount.rotation(), np.array(mount.translation) + [x, y, 0.0]
    scene = single_box_world((x + 8.0, y, 0.8))
    size = (320, 180)

    def image(response: CameraResponse) -> np.ndarray:
        rgb = render(city, scene, 1, LIGHTINGS[0], pose, intrinsics(mount, size), size, 0.0,
                     np.random.default_rng(0), response=response).rgb
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)

    plain, real = image(CameraResponse()), image(CameraResponse(exposure=0.7, flare=12.0, blur_sigma_px=4.0))
    assert real.mean() < 0.8 * plain.mean() and real.std() < 0.8 * plain.std()  # darker, lower contrast
    assert np.percentile(real, 1) > np.percentile(plain, 1)  # glare lifts black
    assert cv2.Laplacian(real, cv2.CV_64F).var() < 0.5 * cv2.Laplacian(plain, cv2.CV_64F).var()  # softer

    draws = [draw_conditions(lighting, speed, np.random.default_rng(seed))
             for seed, (lighting, speed) in enumerate([(LIGHTINGS[0], 8.0)] * 5 + [(LIGHTINGS[2], 8.0)] * 5)]
    assert len({d.camera.exposure for d in draws}) == 10 and len({d.lidar_gain for d in draws}) == 10
    sunny, dusk = draws[:5], draws[5:]
    # At dusk the 20 ms exposure cap leaves frames darker and smeared by the ego's motion.
    assert max(d.camera.exposure for d in dusk) < min(d.camera.exposure for d in sunny)
    assert min(d.camera.blur_sigma_px for d in dusk) > max(d.camera.blur_sigma_px for d in sunny)
