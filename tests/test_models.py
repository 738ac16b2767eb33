"""Model building blocks against independent references: deformable attention, box
coding, camera geometry, pillar scatter, augmentation, and camera-only inputs."""
import math

import numpy as np
import pytest
import torch

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import preset
from vexkd_core.data.dataset import model_source
from vexkd_core.data.preprocess import Augmentation, collate, preprocess
from vexkd_core.models.deformable_attention import DeformableAttention
from vexkd_core.models.detection_head import DetectionHead
from vexkd_core.models.lidar_encoder import LidarEncoder, pillar_inputs
from vexkd_core.models.vexkd import build_model
from vexkd_core.structures import BEVGrid, Boxes3D

pytestmark = pytest.mark.unit

CONFIG = preset("tiny")


def bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample (C, H, W) at continuous pixel coordinates, zero outside (grid_sample, align_corners=False)."""
    channels, height, width = feature.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    value = torch.zeros(channels)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < width and 0 <= yi < height:
                value += weight * feature[:, yi, xi]
    return value


@torch.no_grad()
def test_deformable_attention_equals_a_naive_loop():
    torch.manual_seed(0)
    dim, heads, levels, points = 8, 2, 2, 3
    attention = DeformableAttention(dim, heads, levels, points)
    torch.nn.init.normal_(attention.offsets.weight, std=0.5)  # non-trivial offsets
    torch.nn.init.normal_(attention.offsets.bias, std=1.0)
    query, reference = torch.randn(2, 5, dim), torch.rand(2, 5, 2)
    maps = [torch.randn(2, dim, 6, 7), torch.randn(2, dim, 4, 3)]
    fast = attention(query, reference, maps)

    per_head = dim // heads
    offsets = attention.offsets(query).view(2, 5, heads, levels, points, 2)
    weights = attention.attention(query).view(2, 5, heads, levels * points).softmax(-1).view(2, 5, heads, levels, points)
    slow = torch.zeros(2, 5, dim)
    for b in range(2):
        values = [attention.value(m[b].flatten(1).T).T.reshape(dim, *m.shape[-2:]) for m in maps]
        for q in range(5):
            for h in range(heads):
                accumulated = torch.zeros(per_head)
                for level, value in enumerate(values):
                    height, width = value.shape[-2:]
                    for p in range(points):
                        x = reference[b, q, 0] * width + offsets[b, q, h, level, p, 0]
                        y = reference[b, q, 1] * height + offsets[b, q, h, level, p, 1]
                        sample = bilinear(value[h * per_head:(h + 1) * per_head], float(x), float(y))
                        accumulated += weights[b, q, h, level, p] * sample
                slow[b, q, h * per_head:(h + 1) * per_head] = accumulated
    torch.testing.assert_close(fast, attention.output(slow), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_deformable_attention_starts_as_in_mmcv():
    """Head h samples along its own direction (angle 2 pi h / heads), point k at k + 1 cells
    (square ring), on every level; attention weights start uniform."""
    heads, levels, points = 8, 2, 3
    attention = DeformableAttention(16, heads, levels, points)
    offsets = attention.offsets(torch.randn(1, 4, 16)).view(4, heads, levels, points, 2)
    assert torch.allclose(offsets, offsets[:1].expand_as(offsets))  # no dependence on the query yet
    for h in range(heads):
        angle = 2 * math.pi * h / heads
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction /= direction.abs().max()
        for k in range(points):
            torch.testing.assert_close(offsets[0, h, :, k], (k + 1) * direction.expand(levels, 2))
    weights = attention.attention(torch.randn(3, 16))
    assert torch.count_nonzero(weights) == 0  # softmax over zeros: uniform


def test_box_targets_decode_back_to_the_boxes():
    grid = CONFIG.grid.bev
    head = DetectionHead(8, 8, len(DETECTION_CLASSES), grid)
    boxes = Boxes3D(center=np.array([[10.3, -4.7, -0.8], [-30.1, 22.45, 0.2]]), size_lwh=np.array([[4.6, 1.9, 1.7], [0.7, 0.6, 1.8]]),
                    yaw=np.array([0.4, -2.9]), velocity=np.array([[3.0, -1.0], [0.5, 0.2]]), label=np.array([0, 8]),
                    score=np.ones(2))
    targets = head.targets([boxes], "cpu")
    heatmap_logits = torch.where(targets["heatmap"] == 1, torch.tensor(8.0), torch.tensor(-8.0))
    regression = torch.zeros(1, 10, grid.height * grid.width)
    for k in range(2):
        regression[0, :, targets["index"][0, k]] = targets["regression"][0, k]
    decoded = head.decode({"heatmap": heatmap_logits, "regression": regression.view(1, 10, grid.height, grid.width)},
                          max_detections=10, score_threshold=0.5)[0]
    order = np.argsort(decoded.label)
    np.testing.assert_allclose(decoded.center[order], boxes.center, atol=1e-4)
    np.testing.assert_allclose(decoded.size_lwh[order], boxes.size_lwh, atol=1e-4)
    np.testing.assert_allclose(np.cos(decoded.yaw[order] - boxes.yaw), 1.0, atol=1e-6)
    np.testing.assert_allclose(decoded.velocity[order], boxes.velocity, atol=1e-5)
    np.testing.assert_array_equal(decoded.label[order], boxes.label)


def test_pillar_scatter_puts_the_max_feature_in_the_right_cell():
    grid = BEVGrid.centered(4.0, 1.0)  # 8 x 8 cells
    encoder = LidarEncoder(grid, 4).eval()
    points = torch.tensor([[0, 0.5, 0.5, 0.0, 10.0, 0.0], [0, 0.6, 0.4, 0.0, 20.0, 0.0],
                           [1, -3.5, 2.5, 0.0, 5.0, 0.0], [0, 9.0, 0.0, 0.0, 1.0, 0.0]])  # last one off the grid
    bev = encoder(points, batch_size=2)
    occupied = (bev.abs().sum(dim=1) > 0).nonzero().tolist()
    assert sorted(occupied) == [[0, 4, 4], [1, 6, 0]]  # (batch, row = y cell, column = x cell)
    with torch.no_grad():
        features = torch.cat([points[:2, 1:6], points[:2, 1:3] - 0.5, points[:2, 1:4] - points[:2, 1:4].mean(0)], 1)
        expected = torch.relu(encoder.norm(encoder.linear(features))).max(dim=0).values
    torch.testing.assert_close(bev[0, :, 4, 4], expected)


def test_pillar_inputs_are_the_same_with_and_without_points_off_the_grid():
    """A node's cloud is cropped to the grid before it comes here (no point to leave out), a
    training batch's is not: both paths give every on-grid point the same cell and inputs."""
    grid = BEVGrid.centered(4.0, 1.0)
    generator = torch.Generator().manual_seed(0)
    inside = torch.cat([torch.randint(0, 2, (200, 1), generator=generator).float(),
                        torch.rand(200, 3, generator=generator) * 7.9 - 3.95, torch.rand(200, 2, generator=generator)], 1)
    outside = inside[:50].clone()
    outside[:, 1] += 9.0
    mixed = torch.cat([outside[:25], inside, outside[25:]])
    alone, with_outside = pillar_inputs(inside, grid, 2), pillar_inputs(mixed, grid, 2)
    assert torch.equal(alone.cell, with_outside.cell) and torch.equal(alone.features, with_outside.features)
    first = alone.cell == alone.cell[0]  # the mean offsets of one pillar's points sum to zero
    torch.testing.assert_close(alone.features[first, 7:].sum(0), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_source(tiny_world):
    dataroot, config = tiny_world
    return model_source(dataroot, config.version, "val", CONFIG, True)


def test_camera_frustum_projects_back_to_its_pixel_and_depth(tiny_source):
    sample = tiny_source.sample(1)
    inputs, _ = preprocess(sample, CONFIG, Augmentation(rotation=0.3, scale=1.04, flip_y=True, image_scale=1.03))
    batch = collate([inputs])
    encoder = build_model(CONFIG, "camera").camera_encoder
    positions = encoder.geometry.frustum_in_lidar(batch.intrinsics, batch.camera_to_lidar, batch.image_transform,
                                         batch.lidar_augmentation)[0]  # (N, D, h, w, 3)
    lidar_from_augmented = torch.linalg.inv(batch.lidar_augmentation[0])
    for camera in (0, 3):
        point = positions[camera, 7, 5, 9]
        in_lidar = lidar_from_augmented[:3, :3] @ point + lidar_from_augmented[:3, 3]
        in_camera = torch.linalg.inv(batch.camera_to_lidar[0, camera])
        xyz = in_camera[:3, :3] @ in_lidar + in_camera[:3, 3]
        pixel = batch.image_transform[0, camera] @ (batch.intrinsics[0, camera] @ (xyz / xyz[2]))
        torch.testing.assert_close(pixel[:2], encoder.geometry.frustum[7, 5, 9, :2], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(xyz[2], encoder.geometry.frustum[7, 5, 9, 2], atol=1e-3, rtol=1e-4)
        grid = CONFIG.grid.bev  # and the BEV cell the splat uses is the cell of that point
        cell = (int((point[0] - grid.x_min) // grid.resolution), int((point[1] - grid.y_min) // grid.resolution))
        assert 0 <= cell[0] < grid.width and 0 <= cell[1] < grid.height


def points_in(boxes: Boxes3D, xyz: np.ndarray) -> np.ndarray:
    counts = []
    for i in range(len(boxes)):
        c, s = np.cos(boxes.yaw[i]), np.sin(boxes.yaw[i])
        local = (xyz - boxes.center[i]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        counts.append(np.all(np.abs(local) <= boxes.size_lwh[i] / 2, axis=1).sum())
    return np.array(counts)


def test_augmentation_moves_points_boxes_map_and_cameras_together(tiny_source):
    sample = tiny_source.sample(2)
    plain_inputs, plain = preprocess(sample, CONFIG)
    augmentation = Augmentation(rotation=0.35, scale=1.05, flip_y=True, image_scale=1.0)
    inputs, augmented = preprocess(sample, CONFIG, augmentation)
    plain_counts = points_in(plain.boxes, plain_inputs.points[:, :3].numpy().astype(np.float64))
    counts = points_in(augmented.boxes, inputs.points[:, :3].numpy().astype(np.float64))
    assert plain_counts.sum() > 100
    central = np.hypot(*plain.boxes.center[:, :2].T) < 40  # away from the grid edge the rotation cuts
    np.testing.assert_array_equal(counts[central], plain_counts[central])
    # The map turns with the frame: what lies 10 m ahead in the plain frame lies at A @ that.
    grid = CONFIG.map_grid.bev
    def cell(xy):
        return int((xy[1] - grid.y_min) // grid.resolution), int((xy[0] - grid.x_min) // grid.resolution)
    moved = 0
    for xy in np.random.default_rng(0).uniform(-30, 30, (200, 2)):
        turned = augmentation.lidar_matrix()[:2, :2] @ xy
        moved += bool(torch.equal(plain.map_masks[(slice(None),) + cell(xy)],
                                  augmented.map_masks[(slice(None),) + cell(turned)]))
    assert moved > 180  # equal except where cell borders fall differently
    # A box centre projects onto the same original-image pixel through either geometry.
    np.testing.assert_allclose(original_pixel(inputs, augmented.boxes.center[0]),
                               original_pixel(plain_inputs, plain.boxes.center[0]), atol=1e-3)


def original_pixel(inputs, centre: np.ndarray) -> np.ndarray:
    """Where a point of the (augmented) model frame appears in CAM_FRONT's original image."""
    lidar = np.linalg.inv(inputs.lidar_augmentation.double().numpy()) @ np.r_[centre, 1.0]
    camera = np.linalg.inv(inputs.camera_to_lidar[0].double().numpy()) @ lidar
    return inputs.intrinsics[0].double().numpy() @ (camera[:3] / camera[2])


def test_camera_student_ignores_lidar_points(tiny_source):
    torch.manual_seed(0)
    model = build_model(CONFIG, "camera").eval()
    inputs, _ = preprocess(tiny_source.sample(0), CONFIG)
    batch = collate([inputs])
    other = collate([inputs])
    other.points = torch.cat([other.points[:, :1], torch.randn(len(other.points), 5) * 20], dim=1)
    with torch.no_grad():
        first, second = model(batch), model(other)
    torch.testing.assert_close(first.low, second.low)
    torch.testing.assert_close(first.detection["heatmap"], second.detection["heatmap"])
