"""Train-time augmentation (BEVFusion's nuScenes recipe), on a hand-built sample: each part
alone and all of them together keep points in their boxes, the map under the points,
velocities with the frame, and every box centre on its marker in the warped image and on
the model's frustum; the tiny preset still draws exactly what it drew before."""
import dataclasses

import numpy as np
import pytest
import torch

from vexkd_core.config import preset
from vexkd_core.data.preprocess import IMAGE_MEAN, IMAGE_STD, Augmentation, ImageAugmentation, image_transform, \
    preprocess
from vexkd_core.data.sample import CAMERA_CHANNELS, CameraView, Sample
from vexkd_core.models.camera_encoder import CameraEncoder
from vexkd_core.structures import BEVGrid, Boxes3D

pytestmark = pytest.mark.unit

# The tiny model's small tensors with the nuscenes preset's augmentation, every part on.
CONFIG = dataclasses.replace(preset("tiny"), augment=preset("nuscenes").augment)
IMAGE_W, IMAGE_H, FOCAL = 800, 450, 400.0
INTRINSICS = np.array([[FOCAL, 0.0, IMAGE_W / 2], [0.0, FOCAL, IMAGE_H / 2], [0.0, 0.0, 1.0]])
CAMERA_YAWS_DEG = (0.0, -55.0, -110.0, 180.0, 110.0, 55.0)  # CAMERA_CHANNELS order
POINTS_PER_BOX, BOX_RANGE_M, MAP_BLOCK_M = 40, 10.0, 2.0
MARKER_RADIUS_PX = 12


def camera_to_lidar(yaw: float) -> np.ndarray:
    """A camera at the LiDAR origin looking along `yaw` (camera z forward, x right, y down)."""
    c, s = np.cos(yaw), np.sin(yaw)
    forward, right = np.array([c, s, 0.0]), np.array([s, -c, 0.0])
    transform = np.eye(4)
    transform[:3, :3] = np.column_stack([right, [0.0, 0.0, -1.0], forward])
    return transform


def yaw_rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def local(boxes: Boxes3D, i: int, xyz: np.ndarray) -> np.ndarray:
    """Points in box i's own frame (x along its heading)."""
    return (xyz - boxes.center[i]) @ yaw_rotation(boxes.yaw[i])


def build_sample() -> tuple[Sample, np.ndarray]:
    """One box in front of each camera, with points inside it near its faces, points just outside
    them, and a marker on its centre's pixel; map probe points at the centres of 2 m map blocks.
    Also each point's owner: its box, -1 for a probe, -2 for just outside a box."""
    rng = np.random.default_rng(5)
    yaws = np.radians(CAMERA_YAWS_DEG)
    centres = np.column_stack([BOX_RANGE_M * np.cos(yaws), BOX_RANGE_M * np.sin(yaws), np.full(6, -0.5)])
    boxes = Boxes3D(centres, np.tile([4.0, 2.0, 1.6], (6, 1)), np.arange(6) * 0.9 - 2.0,
                    np.column_stack([np.arange(6) - 2.5, np.ones(6)]), np.arange(6), np.ones(6))

    def in_box(i: int, fractions: np.ndarray) -> np.ndarray:
        return boxes.center[i] + fractions * boxes.size_lwh[i] @ yaw_rotation(boxes.yaw[i]).T

    # Up to 0.49 of a side inside, and one point 0.53 beyond each face: a box scaled wrongly by
    # 10 % loses the first or takes in the second.
    beyond_faces = np.concatenate([np.eye(3), -np.eye(3)]) * 0.53
    groups = [(in_box(i, rng.uniform(-0.49, 0.49, (POINTS_PER_BOX, 3))), i) for i in range(6)] + \
        [(in_box(i, beyond_faces), -2) for i in range(6)]

    source = BEVGrid.centered(75.0, 1.0)
    block_centres = source.x_min + (np.arange(source.width // MAP_BLOCK_M) + 0.5) * MAP_BLOCK_M
    block_centres = block_centres[np.abs(block_centres) < 30]
    probes = np.column_stack([*(g.ravel() for g in np.meshgrid(block_centres, block_centres)),
                              np.full(len(block_centres) ** 2, -1.5)])
    # Map probes lie on the ground, clear of the boxes.
    clear = np.all([np.any(np.abs(local(boxes, i, probes))[:, :2] > boxes.size_lwh[i, :2] / 2 + 1.0, axis=1)
                    for i in range(6)], axis=0)
    xyz = np.concatenate([points for points, _ in groups] + [probes[clear]])
    owner = np.concatenate([np.full(len(points), i) for points, i in groups] + [np.full(clear.sum(), -1)])
    points = np.column_stack([xyz, np.ones((len(xyz), 2))]).astype(np.float32)

    cells = (np.arange(source.width) // MAP_BLOCK_M).astype(int)
    masks = np.stack([(cells[:, None] * 7 + cells[None, :] * 3 + c) % 4 == 0 for c in range(6)])

    cameras = []
    for k, (channel, yaw) in enumerate(zip(CAMERA_CHANNELS, yaws)):
        to_lidar = camera_to_lidar(yaw)
        in_camera = np.linalg.inv(to_lidar) @ np.r_[centres[k], 1.0]
        u, v = np.rint((INTRINSICS @ (in_camera[:3] / in_camera[2]))[:2]).astype(int)
        image = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
        image[v - MARKER_RADIUS_PX:v + MARKER_RADIUS_PX + 1, u - MARKER_RADIUS_PX:u + MARKER_RADIUS_PX + 1] = 255
        cameras.append(CameraView(channel, image, INTRINSICS, to_lidar))
    sample = Sample("hand-built", 0, points, cameras, np.eye(4), boxes, masks, source)
    return sample, owner


SAMPLE, OWNER = build_sample()


@pytest.fixture(scope="module")
def encoder():
    grid = CONFIG.grid
    return CameraEncoder(CONFIG.model.camera, grid.bev, (grid.z_min_m, grid.z_max_m), CONFIG.model.bev_channels)


def model_pixel(inputs, k: int, centre: np.ndarray) -> tuple[np.ndarray, float]:
    """Input pixel and depth of an augmented-frame point in camera k, through the matrices the
    model receives."""
    lidar = np.linalg.inv(inputs.lidar_augmentation.double().numpy()) @ np.r_[centre, 1.0]
    camera = np.linalg.inv(inputs.camera_to_lidar[k].double().numpy()) @ lidar
    pixel = inputs.image_transform[k].double().numpy() @ inputs.intrinsics[k].double().numpy() @ \
        (camera[:3] / camera[2])
    return pixel[:2], camera[2]


def marker(inputs, k: int) -> np.ndarray:
    """Brightness-weighted centre of the marker in camera k's warped input image."""
    pixels = inputs.images[k].numpy().transpose(1, 2, 0) * IMAGE_STD + IMAGE_MEAN
    weight = np.clip(pixels.mean(axis=2), 0.0, 255.0)
    assert weight.sum() > 255 * 20, f"camera {k}: the marker left the image"
    rows, cols = np.indices(weight.shape)
    return np.array([(cols * weight).sum(), (rows * weight).sum()]) / weight.sum()


def check_consistent(augmentation: Augmentation, encoder: CameraEncoder) -> None:
    plain_inputs, plain = preprocess(SAMPLE, CONFIG)
    inputs, augmented = preprocess(SAMPLE, CONFIG, augmentation)
    xyz = inputs.points[:, :3].numpy().astype(np.float64)
    assert len(xyz) == len(SAMPLE.points) and len(augmented.boxes) == 6

    # Points stay in their boxes, and the front half of a box stays its front half (yaw, not yaw + pi).
    for i in range(6):
        before = local(plain.boxes, i, plain_inputs.points[:, :3].numpy().astype(np.float64))
        after = local(augmented.boxes, i, xyz)
        contained = np.all(np.abs(after) <= augmented.boxes.size_lwh[i] / 2 + 1e-4, axis=1)
        np.testing.assert_array_equal(contained, OWNER == i)
        np.testing.assert_array_equal(np.sign(after[OWNER == i, 0]), np.sign(before[OWNER == i, 0]))

    # The map moves with the points: the map cell under each probe point is the same class set.
    grid = CONFIG.map_grid.bev
    def cells(points):
        return ((points[:, 1] - grid.y_min) // grid.resolution).astype(int), \
            ((points[:, 0] - grid.x_min) // grid.resolution).astype(int)
    probes = OWNER == -1
    before = plain.map_masks[(slice(None),) + cells(SAMPLE.points[probes].astype(np.float64))]
    after = augmented.map_masks[(slice(None),) + cells(xyz[probes])]
    assert before.sum() > 20
    torch.testing.assert_close(after, before)

    # Velocity moves with the frame: points carried by their box's velocity for 0.5 s land where
    # the augmented velocity carries the augmented points.
    moved = dataclasses.replace(SAMPLE, points=SAMPLE.points.copy())
    for i in range(6):
        moved.points[OWNER == i, :2] += 0.5 * SAMPLE.boxes.velocity[i]
    moved_inputs, _ = preprocess(moved, CONFIG, augmentation)
    shift = (moved_inputs.points[:, :2] - inputs.points[:, :2]).numpy()
    for i in range(6):
        np.testing.assert_allclose(shift[OWNER == i], np.tile(0.5 * augmented.boxes.velocity[i], (POINTS_PER_BOX, 1)),
                                   atol=1e-4)

    # Each box centre projects, through the matrices the model gets, onto its marker in the warped
    # image, and the model's frustum lifts that pixel at that depth back onto the box centre.
    for k in range(6):
        pixel, depth = model_pixel(inputs, k, augmented.boxes.center[k])
        np.testing.assert_allclose(marker(inputs, k), pixel, atol=0.5)
        encoder.geometry.frustum = torch.tensor([[[[*pixel, depth]]]], dtype=torch.float32)
        lifted = encoder.geometry.frustum_in_lidar(*(getattr(inputs, name)[None] for name in (
            "intrinsics", "camera_to_lidar", "image_transform", "lidar_augmentation")))[0, k, 0, 0, 0]
        np.testing.assert_allclose(lifted.numpy(), augmented.boxes.center[k], atol=2e-3)


def per_camera(**jitter) -> tuple[ImageAugmentation, ...]:
    return tuple(ImageAugmentation(**jitter) for _ in CAMERA_CHANNELS)


PARTS = {
    "rotation": Augmentation(rotation=np.radians(40.0)),
    "scale": Augmentation(scale=0.9),
    "translation": Augmentation(translation=(1.7, -1.5, 0.4)),  # past a map block
    "flip_x": Augmentation(flip_x=True),
    "flip_y": Augmentation(flip_y=True),
    "image_resize": Augmentation(cameras=tuple(ImageAugmentation(scale=s) for s in np.linspace(0.87, 1.25, 6))),
    "image_crop": Augmentation(cameras=tuple(ImageAugmentation(crop_position=p) for p in np.linspace(0, 1, 6))),
    "image_rotation": Augmentation(cameras=tuple(ImageAugmentation(rotation=r) for r in np.radians(
        np.linspace(-5.4, 5.4, 6)))),
    "image_flip": Augmentation(cameras=per_camera(flip=True)),
}


@pytest.mark.parametrize("part", PARTS)
def test_each_part_keeps_points_boxes_map_velocity_and_cameras_together(part, encoder):
    check_consistent(PARTS[part], encoder)


def test_everything_on_keeps_them_together(encoder):
    everything = Augmentation(rotation=-0.7, scale=1.1, flip_y=True, flip_x=True, translation=(-0.5, 0.7, -0.3),
                              cameras=per_camera(scale=1.2, crop_position=0.1, rotation=-0.09, flip=True))
    check_consistent(everything, encoder)
    for seed in range(3):  # and as the nuscenes preset draws them
        check_consistent(Augmentation.random(CONFIG.augment, np.random.default_rng(seed)), encoder)


def test_the_nuscenes_preset_draws_every_part():
    draws = [Augmentation.random(CONFIG.augment, np.random.default_rng(seed)) for seed in range(200)]
    rotations = np.degrees([a.rotation for a in draws])
    assert rotations.min() < -40 and rotations.max() > 40 and np.abs(rotations).max() <= 45
    assert 0.4 < np.mean([a.flip_x for a in draws]) < 0.6 and 0.4 < np.mean([a.flip_y for a in draws]) < 0.6
    assert 0.4 < np.std([a.translation for a in draws]) < 0.6
    cameras = [c for a in draws for c in a.cameras]
    assert len({c.scale for c in draws[0].cameras}) == 6  # one draw per camera
    scales = np.array([c.scale for c in cameras]) * 704 / 1600  # BEVFusion's resize_lim 0.38-0.55
    assert 0.38 <= scales.min() < 0.39 and 0.54 < scales.max() <= 0.55
    assert np.abs(np.degrees([c.rotation for c in cameras])).max() <= 5.4
    assert 0.4 < np.mean([c.flip for c in cameras]) < 0.6 and min(c.crop_position for c in cameras) < 0.05


def test_the_tiny_preset_draws_and_transforms_exactly_as_before():
    config = preset("tiny")
    for seed in range(5):
        rng, old = np.random.default_rng(seed), np.random.default_rng(seed)
        augmentation = Augmentation.random(config.augment, rng)
        rotation, scale = np.radians(old.uniform(-22.5, 22.5)), old.uniform(0.95, 1.05)
        flip_y, image_scale = old.random() < 0.5, old.uniform(0.95, 1.05)
        assert (augmentation.rotation, augmentation.scale, augmentation.flip_y) == (rotation, scale, flip_y)
        assert set(augmentation.cameras) == {ImageAugmentation(scale=image_scale)}
        assert not augmentation.flip_x and augmentation.translation == (0.0, 0.0, 0.0)
        assert rng.random() == old.random()  # nothing else drawn: point subsampling sees the same stream

        c, s = np.cos(rotation), np.sin(rotation)
        expected = np.eye(4)
        expected[:3, :3] = np.diag([1.0, -1.0 if flip_y else 1.0, 1.0]) @ \
            (scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
        assert np.array_equal(augmentation.lidar_matrix(), expected)
        yaw = SAMPLE.boxes.yaw + rotation
        yaw = -yaw if flip_y else yaw
        assert np.array_equal(augmentation.boxes(SAMPLE.boxes).yaw, np.arctan2(np.sin(yaw), np.cos(yaw)))
    for image_scale in (1.0, 1.03):  # 1.0: the deterministic inference transform
        scale = 256 / 1600 * image_scale
        expected = np.array([[scale, 0.0, -(1600 * scale - 256) / 2],
                             [0.0, scale, -min(900 * scale * 0.25, 900 * scale - 96)], [0.0, 0.0, 1.0]])
        assert np.array_equal(image_transform(900, 1600, config, ImageAugmentation(scale=image_scale)), expected)
        assert np.array_equal(image_transform(900, 1600, config, Augmentation(image_scale=image_scale).camera(0)),
                              expected)


def test_the_image_mirror_is_exact_and_the_rotation_turns_about_the_centre():
    # Consistency alone would accept any offset: the mirror must fill the input as the plain image does.
    plain, _ = preprocess(SAMPLE, CONFIG)
    mirrored, _ = preprocess(SAMPLE, CONFIG, Augmentation(cameras=per_camera(flip=True)))
    torch.testing.assert_close(mirrored.images, plain.images.flip(-1), atol=0.05, rtol=0.0)
    camera = CONFIG.model.camera
    centre = np.array([(camera.input_width - 1) / 2, (camera.input_height - 1) / 2, 1.0])
    turn = image_transform(IMAGE_H, IMAGE_W, CONFIG, ImageAugmentation(rotation=0.09)) @ \
        np.linalg.inv(image_transform(IMAGE_H, IMAGE_W, CONFIG))
    np.testing.assert_allclose(turn @ centre, centre, atol=1e-9)


@pytest.mark.parametrize("name", ["tiny", "nuscenes"])
def test_the_source_map_covers_the_furthest_augmentation_draw(name):
    """A map read with map_source_grid's margin leaves no target cell empty at the preset's
    largest rotation, smallest scale and a three-sigma translation."""
    from types import SimpleNamespace

    from vexkd_core.config import preset
    from vexkd_core.data.dataset import map_source_grid
    from vexkd_core.data.preprocess import map_targets

    config = preset(name)
    source = map_source_grid(config, augmented=True)
    shift = 3 * config.augment.translation_std_m
    furthest = Augmentation(rotation=np.radians(min(config.augment.rotation_deg, 45.0)),
                            scale=min(config.augment.scale), translation=(shift, shift, 0.0))
    everywhere = SimpleNamespace(map_source_grid=source, map_masks=np.ones((6, source.height, source.width), bool))
    assert map_targets(everywhere, furthest, config.map_grid.bev).numpy().all()


@pytest.mark.parametrize("augmentation", [Augmentation(), PARTS["rotation"], Augmentation(rotation=0.3, scale=1.05,
                                                                                         flip_x=True)],
                         ids=["inference", "rotation", "rotated_scaled_flipped"])
def test_the_model_gets_exactly_the_transformed_points_on_the_grid_and_no_non_finite_one(augmentation):
    """The float64 transform, grid crop and finite test written out plainly, against what
    preprocess hands the model (it skips the identity and fills float32 column by column)."""
    config = preset("tiny")
    rng = np.random.default_rng(3)
    extent = config.grid.half_extent_m
    points = np.column_stack([rng.uniform(-1.2 * extent, 1.2 * extent, (4000, 2)), rng.uniform(-6, 4, 4000),
                              rng.uniform(0, 100, 4000), rng.uniform(0, 0.5, 4000)]).astype(np.float32)
    for column in range(5):  # a NaN and an inf in every column, each in its own point
        points[10 * column, column], points[10 * column + 1, column] = np.nan, -np.inf
    sample = Sample(token="points", timestamp_us=0, points=points, cameras=[], lidar_to_global=np.eye(4))

    matrix = augmentation.lidar_matrix()
    xyz = points[:, :3].astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    keep = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent) & (xyz[:, 2] >= config.grid.z_min_m) & \
        (xyz[:, 2] < config.grid.z_max_m) & np.all(np.isfinite(points), axis=1)
    expected = np.column_stack([xyz, points[:, 3:5]])[keep].astype(np.float32)

    inputs, _ = preprocess(sample, config, augmentation)
    assert 1000 < len(expected) < len(points) - 10
    np.testing.assert_array_equal(inputs.points.numpy(), expected)


SENSOR_RANDOMISATION = dict(intensity_scale=(0.6, 1.4), point_dropout=0.3, height_jitter_m=0.1)


def test_sensor_randomisation_is_off_in_both_presets():
    for name in ("tiny", "nuscenes"):
        augment = preset(name).augment
        assert (augment.intensity_scale, augment.point_dropout, augment.height_jitter_m) == ((1.0, 1.0), 0.0, 0.0)


def test_sensor_randomisation_draws_within_its_ranges():
    config = dataclasses.replace(preset("tiny").augment, **SENSOR_RANDOMISATION)
    draws = [Augmentation.random(config, np.random.default_rng(seed)) for seed in range(300)]
    scales, kept = np.array([a.intensity_scale for a in draws]), np.array([a.point_keep for a in draws])
    assert 0.6 <= scales.min() < 0.65 and 1.35 < scales.max() <= 1.4
    assert 0.7 <= kept.min() < 0.72 and kept.max() <= 1.0
    assert 0.08 < np.std([a.translation[2] for a in draws]) < 0.12  # the mount height, as a translation
    assert all(a.translation[:2] == (0.0, 0.0) for a in draws)


def test_sensor_randomisation_keeps_a_scaled_subset_and_the_frame_with_its_boxes(encoder):
    original = SAMPLE.points.copy()
    plain, _ = preprocess(SAMPLE, CONFIG)
    inputs, _ = preprocess(SAMPLE, CONFIG, Augmentation(intensity_scale=1.3, point_keep=0.6), np.random.default_rng(0))
    np.testing.assert_array_equal(SAMPLE.points, original)  # a cached sample is left as it was
    assert 0.5 < len(inputs.points) / len(plain.points) < 0.7
    rows = {tuple(p) for p in plain.points[:, :3].numpy().round(5)}
    assert all(tuple(p) in rows for p in inputs.points[:, :3].numpy().round(5))  # a subset, unmoved
    np.testing.assert_allclose(np.sort(inputs.points[:, 3].numpy()), 1.3)  # the hand-built sample's are 1
    # A mount height moves points and boxes together (and nothing else draws from the points' rng).
    height_only = dataclasses.replace(CONFIG.augment, height_jitter_m=0.1, point_dropout=0.0,
                                      intensity_scale=(1.0, 1.0))
    check_consistent(Augmentation.random(height_only, np.random.default_rng(4)), encoder)
    with pytest.raises(ValueError, match="training rng"):
        preprocess(SAMPLE, CONFIG, Augmentation(point_keep=0.5))


def test_inference_never_randomises_the_sensor():
    """Only a drawn Augmentation randomises; inference passes none, whatever the config says."""
    config = dataclasses.replace(CONFIG, augment=dataclasses.replace(CONFIG.augment, **SENSOR_RANDOMISATION))
    plain, _ = preprocess(SAMPLE, CONFIG)
    inference, _ = preprocess(SAMPLE, config)
    torch.testing.assert_close(inference.points, plain.points, rtol=0.0, atol=0.0)
