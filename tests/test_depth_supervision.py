"""Depth supervision (BEVDepth's) of the camera encoder: LiDAR points of a hand-built sample land
on the feature cell and depth bin the camera geometry says, with and without image augmentation;
points behind a camera, outside its image, of earlier sweeps or behind a nearer point are not
targets; the loss falls as the logits move to the targets; a camera model's forward reads no
points; the frustum stays in float32 under autocast; and a camera student's training step logs
the depth term."""
import csv

import numpy as np
import pytest
import torch

from vexkd_core.config import load_config, preset
from vexkd_core.data.preprocess import Augmentation, ImageAugmentation, collate, image_transform, preprocess
from vexkd_core.data.sample import CAMERA_CHANNELS, CameraView, Sample
from vexkd_core.models.depth_supervision import IGNORE, depth_loss, depth_targets
from vexkd_core.models.vexkd import build_model
from vexkd_core.structures import BEVGrid

pytestmark = pytest.mark.unit

CONFIG = preset("tiny")
CAMERA = CONFIG.model.camera
IMAGE_W, IMAGE_H, FOCAL = 800, 450, 400.0
INTRINSICS = np.array([[FOCAL, 0.0, IMAGE_W / 2], [0.0, FOCAL, IMAGE_H / 2], [0.0, 0.0, 1.0]])
CAMERA_YAWS_DEG = (0.0, -55.0, -110.0, 180.0, 110.0, 55.0)  # CAMERA_CHANNELS order
FACE_DEPTH_M = 12.0  # the centre of bin 5: 1 m + 5.5 x 2 m
FACE_BIN = 5


def camera_to_lidar(yaw: float) -> np.ndarray:
    """A camera at the LiDAR origin looking along `yaw` (camera z forward, x right, y down)."""
    c, s = np.cos(yaw), np.sin(yaw)
    transform = np.eye(4)
    transform[:3, :3] = np.column_stack([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
    return transform


def make_sample(xyz: np.ndarray, lag: np.ndarray | None = None, cameras: tuple[int, ...] = tuple(range(6))) -> Sample:
    """The given points (time lag 0 unless said) and six cameras, of which `cameras` have an image."""
    rng = np.random.default_rng(0)
    lag = np.zeros(len(xyz)) if lag is None else lag
    points = np.column_stack([xyz, np.ones(len(xyz)), lag]).astype(np.float32)
    views = [CameraView(channel, rng.integers(0, 255, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8) if k in cameras
                        else None, INTRINSICS, camera_to_lidar(np.radians(yaw)))
             for k, (channel, yaw) in enumerate(zip(CAMERA_CHANNELS, CAMERA_YAWS_DEG))]
    return Sample("hand-built", 0, points, views, np.eye(4), None, None, BEVGrid.centered(75.0, 1.0))


def box_face() -> np.ndarray:
    """Points on the rear face of a car 12 m ahead of CAM_FRONT: x = 12, y and z across the face."""
    y, z = np.meshgrid(np.linspace(-0.9, 0.9, 7), np.linspace(-1.4, 0.2, 5))
    return np.column_stack([np.full(y.size, FACE_DEPTH_M), y.ravel(), z.ravel()])


def targets_of(sample: Sample, augmentation: Augmentation | None = None) -> torch.Tensor:
    inputs, _ = preprocess(sample, CONFIG, augmentation)
    return depth_targets(collate([inputs]), CAMERA)[0]


def expected_cells(xyz: np.ndarray, augmentation: ImageAugmentation = ImageAugmentation()) -> set[tuple[int, int]]:
    """CAM_FRONT's feature cells of LiDAR-frame points: pinhole, then the image transform, then the stride."""
    camera = xyz @ np.linalg.inv(camera_to_lidar(0.0))[:3, :3].T
    original = np.column_stack([camera[:, :2] / camera[:, 2:] * FOCAL + INTRINSICS[:2, 2], np.ones(len(xyz))])
    pixels = original @ image_transform(IMAGE_H, IMAGE_W, CONFIG, augmentation).T
    return {(int(v // CAMERA.feature_stride), int(u // CAMERA.feature_stride)) for u, v, _ in pixels}


def supervised_cells(targets: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in torch.nonzero(targets != IGNORE)}


def test_a_box_face_gets_its_depth_bin_at_its_pixels_in_its_camera_only():
    face = box_face()
    targets = targets_of(make_sample(face))
    stride = CAMERA.feature_stride
    assert targets.shape == (6, CAMERA.input_height // stride, CAMERA.input_width // stride)
    cells = expected_cells(face)
    assert len(cells) > 10 and supervised_cells(targets[0]) == cells
    assert all(targets[0][cell] == FACE_BIN for cell in cells)
    assert (targets[1:] == IGNORE).all()  # 12 m ahead is outside the side cameras' 90 degree view


@pytest.mark.parametrize("augmentation", [
    Augmentation(rotation=0.4, scale=1.05, flip_y=True, translation=(0.5, -0.3, 0.1),
                 cameras=(ImageAugmentation(scale=1.15, crop_position=0.2, rotation=np.radians(5.0), flip=True),) * 6),
    Augmentation(flip_x=True, cameras=(ImageAugmentation(scale=0.9, rotation=np.radians(-5.4)),) * 6),
])
def test_the_targets_follow_the_lidar_and_image_augmentation(augmentation):
    face = box_face()
    inputs, _ = preprocess(make_sample(face), CONFIG, augmentation)
    batch = collate([inputs])
    targets = depth_targets(batch, CAMERA)[0]
    cells = expected_cells(face, augmentation.camera(0))
    assert supervised_cells(targets[0]) == cells
    assert all(targets[0][cell] == FACE_BIN for cell in cells)  # depth is the camera's, not the scaled frame's
    # The encoder's frustum at those cells and that bin lifts back onto the face (within half a cell's ray offset).
    encoder = build_model(CONFIG, "camera").camera_encoder
    lifted = encoder.geometry.frustum_in_lidar(batch.intrinsics, batch.camera_to_lidar, batch.image_transform,
                                      batch.lidar_augmentation)[0, 0, FACE_BIN]
    original = torch.linalg.inv(batch.lidar_augmentation[0]).double()
    for row, column in cells:
        point = (original[:3, :3] @ lifted[row, column].double() + original[:3, 3]).numpy()
        assert abs(point[0] - FACE_DEPTH_M) < 0.05
        assert np.linalg.norm(face[:, 1:] - point[1:], axis=1).min() < 0.6


def test_the_frustum_keeps_float32_under_autocast():
    """The trainer's bfloat16 autocast (CUDA) must not move the frustum off the depth targets' cells."""
    batch = collate([preprocess(make_sample(box_face()), CONFIG, Augmentation(rotation=0.3, scale=1.05))[0]])
    encoder = build_model(CONFIG, "camera").camera_encoder
    matrices = (batch.intrinsics, batch.camera_to_lidar, batch.image_transform, batch.lidar_augmentation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = encoder.geometry.frustum_in_lidar(*matrices)
    assert torch.equal(under_autocast, encoder.geometry.frustum_in_lidar(*matrices))


def test_points_behind_a_camera_outside_its_image_or_without_an_image_are_no_targets():
    # Mirror images through the camera centre: each projects onto the other's pixel in CAM_FRONT and
    # in CAM_BACK, with a negative depth that would be the cell's minimum.
    ahead, behind = np.array([[FACE_DEPTH_M, -0.3, 0.2]]), np.array([[-FACE_DEPTH_M, 0.3, -0.2]])
    wide = np.array([[FACE_DEPTH_M, 15.0, -0.2]])  # 51 degrees left: outside CAM_FRONT's 45 degree half-view
    targets = targets_of(make_sample(np.concatenate([ahead, behind, wide]), cameras=(0, 3)))
    (cell,) = expected_cells(ahead)
    assert supervised_cells(targets[0]) == {cell} and targets[0][cell] == FACE_BIN
    # y = 0.3 m is CAM_BACK's right: just right of its centre
    assert supervised_cells(targets[3]) == {(4, 16)} and targets[3][4, 16] == FACE_BIN
    assert (targets[5] == IGNORE).all()  # CAM_FRONT_LEFT sees `wide` but has no image
    assert len(supervised_cells(targets_of(make_sample(wide, cameras=(5,)))[5])) == 1  # with one, it is a target


def test_the_nearest_key_frame_point_of_a_cell_wins():
    ray = np.array([0.3, -0.2]) / FACE_DEPTH_M
    at = lambda depth: [depth, depth * ray[0], depth * ray[1]]  # noqa: E731
    xyz = np.array([at(20.0), at(FACE_DEPTH_M), at(30.0), at(5.0)])
    targets = targets_of(make_sample(xyz, lag=np.array([0.0, 0.0, 0.0, 0.1])))  # 5 m: an earlier sweep's
    (cell,) = expected_cells(xyz[:1])
    assert supervised_cells(targets[0]) == {cell} and targets[0][cell] == FACE_BIN
    # A point nearer than the first bin hides the ones behind it and leaves the cell unsupervised.
    near = targets_of(make_sample(np.concatenate([xyz[:1], [at(0.8)]])))
    assert (near == IGNORE).all()


def test_the_loss_falls_as_the_logits_move_to_the_targets_and_ignores_unsupervised_cells():
    torch.manual_seed(0)
    targets = torch.full((1, 6, 12, 32), IGNORE)
    targets[0, 0, 4, 10:20] = torch.arange(10)
    logits = torch.randn(1, 6, CAMERA.depth_bins, 12, 32)
    towards = torch.zeros_like(logits)
    towards[0, 0, :, 4, 10:20] = torch.nn.functional.one_hot(torch.arange(10), CAMERA.depth_bins).T.float()
    losses = [float(depth_loss(logits + 3 * step * towards, targets)) for step in range(4)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    elsewhere = logits.clone()
    elsewhere[0, 1:] = torch.randn_like(elsewhere[0, 1:])
    assert float(depth_loss(elsewhere, targets)) == losses[0]
    assert float(depth_loss(logits, torch.full_like(targets, IGNORE))) == 0.0


@torch.no_grad()
def test_a_camera_model_forward_reads_no_points():
    model = build_model(CONFIG, "camera").eval()
    batch = collate([preprocess(make_sample(box_face()), CONFIG)[0]])
    reference = model(batch)
    for points in (torch.zeros(0, 6), torch.full_like(batch.points, float("nan"))):
        batch.points = points
        output = model(batch)
        for name in ("low", "high", "map_logits", "depth_logits"):
            assert torch.equal(getattr(output, name), getattr(reference, name)), name
        for name, value in output.detection.items():
            assert torch.equal(value, reference.detection[name]), name


def test_depth_supervision_is_on_for_camera_models_only_and_off_at_weight_zero():
    batch = collate([preprocess(make_sample(box_face()), CONFIG)[0]])
    for modality, expected in (("camera", {"depth"}), ("fusion", set()), ("lidar", set())):
        model = build_model(CONFIG, modality)
        assert set(model.depth_losses(model(batch), batch)) == expected, modality
    off = load_config("tiny", ["model.camera.depth_loss_weight=0"])
    model = build_model(off, "camera")
    assert model.depth_losses(model(batch), batch) == {}


def test_a_camera_student_training_step_logs_the_depth_term(tiny_world, tmp_path):
    from vexkd_core.data.dataset import map_source_grid
    from vexkd_core.data.nuscenes_source import NuScenesSource
    from vexkd_train.trainer import RunOptions, train

    dataroot, world = tiny_world
    config = load_config("tiny", ["train.batch_size=1", "model.lidar.sweeps=1"])
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(config, True))
    torch.manual_seed(0)
    train(build_model(config, "camera"), config, source, "camera",
          RunOptions(tmp_path, max_steps=2, max_epochs=1, progress=False))
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert len(rows) == 2 and all(0.0 < float(row["depth"]) < float(row["loss"]) for row in rows)
