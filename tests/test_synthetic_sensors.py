"""The simulator's parts behave physically: objects never overlap each other, the ego or the
street's structures, LiDAR occludes and reads paint brighter than asphalt, the camera
depth-tests, and every scene has all 10 classes."""
import numpy as np
import pytest

from tests.support.open_ground import OPEN_GROUND, StandingEgo, single_box_world
from vexkd_core.data.synthetic.actors import populate_scene
from vexkd_core.data.synthetic.camera import render
from vexkd_core.data.synthetic.city import ASPHALT, LOCATIONS, PAINT_WHITE, build_city
from vexkd_core.data.synthetic.lidar import LidarSpec, cast_sweep
from vexkd_core.data.synthetic.rig import EGO_BODY_BOXES, MOUNT_BY_CHANNEL, intrinsics
from vexkd_core.data.synthetic.world import KIND_INDEX, SceneSolids
from vexkd_core.geometry import transform_points

pytestmark = pytest.mark.unit


# The ego's body (rig.EGO_BODY_BOXES) as one footprint: its centre ahead of the rear axle.
EGO_LOW, EGO_HIGH = np.min([low for low, _ in EGO_BODY_BOXES], axis=0), \
    np.max([high for _, high in EGO_BODY_BOXES], axis=0)
EGO_CENTRE_AHEAD_M, EGO_SIZE_LW = (EGO_LOW[0] + EGO_HIGH[0]) / 2, (EGO_HIGH - EGO_LOW)[:2]


def footprint(center, size_lwh, yaw):
    cos, sin = abs(np.cos(yaw)), abs(np.sin(yaw))
    half = np.array([size_lwh[0] * cos + size_lwh[1] * sin, size_lwh[0] * sin + size_lwh[1] * cos]) / 2
    return np.r_[center[:2] - half, center[:2] + half]


def overlap(a, b) -> bool:
    return a[0] < b[2] - 0.05 and b[0] < a[2] - 0.05 and a[1] < b[3] - 0.05 and b[1] < a[3] - 0.05


@pytest.mark.parametrize("location", LOCATIONS)
def test_objects_never_overlap_each_other_or_the_ego(location):
    city = build_city(location, seed=0)
    for seed in range(4):
        scenario = populate_scene(city, np.random.default_rng([seed, 1]), 3.5)
        classes = {a.category for a in scenario.actors}
        assert {"vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction",
                "vehicle.motorcycle", "vehicle.bicycle", "movable_object.trafficcone",
                "movable_object.barrier"} <= classes and any(c.startswith("human.pedestrian") for c in classes)
        for t in (0.0, 1.75, 3.5):
            boxes = [footprint(a.center_at(t), a.size_lwh, a.yaw) for a in scenario.actors]
            x, y, yaw = scenario.ego.pose_at(t)
            ego = footprint(np.array([x, y]) + EGO_CENTRE_AHEAD_M * np.array([np.cos(yaw), np.sin(yaw)]),
                            EGO_SIZE_LW, yaw)
            for i, box in enumerate(boxes):
                assert not overlap(box, ego), (t, scenario.actors[i].category)
                for j in range(i + 1, len(boxes)):
                    assert not overlap(box, boxes[j]), (t, scenario.actors[i].category, scenario.actors[j].category)


def test_lidar_hits_a_box_in_front_and_it_hides_the_ground_behind():
    city = build_city(LOCATIONS[0], seed=0)
    x, y = OPEN_GROUND
    mount = MOUNT_BY_CHANNEL["LIDAR_TOP"]
    lidar_args = (np.array(mount.translation), mount.rotation(), np.radians(mount.yaw_deg), 0.0)
    spec = LidarSpec(azimuth_steps=720)
    empty = cast_sweep(city, single_box_world((x + 500, y, 0.8)), StandingEgo(x, y), *lidar_args,
                       np.random.default_rng(0), spec)
    with_car = cast_sweep(city, single_box_world((x + 10.0, y, 0.8)), StandingEgo(x, y), *lidar_args,
                          np.random.default_rng(0), spec)
    to_ego = lambda p: transform_points(np.block([[mount.rotation(), np.array(mount.translation)[:, None]],  # noqa: E731
                                                  [np.zeros((1, 3)), np.ones((1, 1))]]), p[:, :3])
    ego_points = to_ego(with_car)
    on_car = (np.abs(ego_points[:, 0] - 10.0) <= 2.05) & (np.abs(ego_points[:, 1]) <= 1.05) & (ego_points[:, 2] > 0.05)
    assert on_car.sum() > 50
    behind = lambda p: (p[:, 0] > 14.0) & (p[:, 0] < 20.0) & (np.abs(p[:, 1]) < 0.5)  # noqa: E731
    assert behind(to_ego(empty)).sum() > 10 and behind(ego_points).sum() == 0  # the car's shadow


def test_lidar_reads_lane_paint_brighter_than_asphalt():
    city = build_city(LOCATIONS[1], seed=0)
    lane = city.lanes[0]
    along = (lane.start + lane.end) / 2
    x, y = (along, lane.position) if lane.axis == 0 else (lane.position, along)
    mount = MOUNT_BY_CHANNEL["LIDAR_TOP"]
    cloud = cast_sweep(city, single_box_world((x + 900, y, 0.8)), StandingEgo(x, y), np.array(mount.translation),
                       mount.rotation(), np.radians(mount.yaw_deg), 0.0, np.random.default_rng(0))
    ego_points = cloud[:, :3] @ mount.rotation().T + mount.translation
    material = city.material_at(ego_points[:, 0] + x, ego_points[:, 1] + y)
    ground = np.abs(ego_points[:, 2]) < 0.1
    assert cloud[ground & (material == PAINT_WHITE), 3].mean() > 3 * cloud[ground & (material == ASPHALT), 3].mean()


def test_camera_depth_test_keeps_the_nearer_box_and_labels_its_pixels():
    city = build_city(LOCATIONS[0], seed=0)
    x, y = OPEN_GROUND
    near = single_box_world((x + 8.0, y, 0.8))
    both = SceneSolids(*(np.concatenate([a, b]) for a, b in zip(
        (near.center, near.size_lwh, near.yaw, near.velocity, near.kind, near.actor, near.colors, near.reflectance,
         near.retro_reading),
        (np.array([[x + 20.0, y, 2.0]]), np.array([[4.0, 8.0, 4.0]]), np.zeros(1), np.zeros((1, 2)),
         np.array([KIND_INDEX["bus"]]), np.array([1]), np.array([[[30, 30, 200], [20, 20, 20]]], np.uint8),
         np.array([0.3]), np.array([200.0])))))
    mount = MOUNT_BY_CHANNEL["CAM_FRONT"]
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = mount.rotation(), np.array(mount.translation) + [x, y, 0.0]
    from vexkd_core.data.synthetic.conditions import LIGHTINGS

    size = (320, 180)
    frame = render(city, both, 2, LIGHTINGS[0], pose, intrinsics(mount, size), size, 0.0,
                   np.random.default_rng(0), count_silhouettes=True)
    centre = frame.actor[90, 160]
    assert centre == 0  # the near box hides the far one where they overlap in the image
    assert (frame.actor == 1).any()  # the far, taller box shows above the near one
    assert frame.silhouette_px[1] > (frame.actor == 1).sum()  # and part of it is hidden
    again = render(city, both, 2, LIGHTINGS[0], pose, intrinsics(mount, size), size, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(frame.rgb, again.rgb)


@pytest.mark.parametrize("location", LOCATIONS)
def test_static_structures_never_reach_into_an_annotated_box(location):
    """Street furniture, trees, signs and buildings stand clear of every actor in 3D, so the
    points in a box (num_lidar_pts) are the object's own."""
    city = build_city(location, seed=0)
    for seed in range(3):
        scenario = populate_scene(city, np.random.default_rng([seed, 1]), 3.5)
        statics = [(footprint(np.array(s.center), s.size_lwh, s.yaw), s.center[2] - s.size_lwh[2] / 2,
                    s.center[2] + s.size_lwh[2] / 2, s.kind) for s in city.solids]
        for actor in scenario.actors:
            for t in (0.0, 1.75, 3.5):
                box, bottom, top = footprint(actor.center_at(t), actor.size_lwh, actor.yaw), \
                    actor.center[2] - actor.size_lwh[2] / 2, actor.center[2] + actor.size_lwh[2] / 2
                for area, low, high, kind in statics:
                    assert not (overlap(box, area) and low < top and bottom < high), (actor.category, kind, t)
