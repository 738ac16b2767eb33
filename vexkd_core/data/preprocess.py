"""Sample -> model tensors: the single preprocessing path of training, evaluation and ROS.

Train-time augmentation is one global rotation / scale / y-flip of the LiDAR frame plus an
image rescale per camera. It moves points, boxes and the map together and is handed to
the camera encoder as matrices, so the camera geometry stays consistent with them.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vexkd_core.config import AugmentConfig, Config
from vexkd_core.structures import BEVGrid, Boxes3D

from .sample import Sample

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 0.0  # radians about +z
    scale: float = 1.0
    flip_y: bool = False
    image_scale: float = 1.0

    @classmethod
    def random(cls, config: AugmentConfig, rng: np.random.Generator) -> "Augmentation":
        return cls(rotation=float(np.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))),
                   scale=float(rng.uniform(*config.scale)), flip_y=bool(config.flip and rng.random() < 0.5),
                   image_scale=float(rng.uniform(*config.image_scale)))

    def lidar_matrix(self) -> np.ndarray:
        """4x4 map from the LiDAR frame to the augmented frame."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag([1.0, -1.0 if self.flip_y else 1.0, 1.0]) @ \
            (self.scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
        return matrix

    def boxes(self, boxes: Boxes3D) -> Boxes3D:
        matrix = self.lidar_matrix()
        centre = boxes.center @ matrix[:3, :3].T
        yaw = boxes.yaw + self.rotation
        velocity = boxes.velocity @ matrix[:2, :2].T
        if self.flip_y:
            yaw = -yaw
        return Boxes3D(centre, boxes.size_lwh * self.scale, np.arctan2(np.sin(yaw), np.cos(yaw)), velocity,
                       boxes.label.copy(), boxes.score.copy())


@dataclass
class ModelInputs:
    """One sample's tensors; `collate` batches them."""

    points: torch.Tensor  # (N, 5) in the augmented LiDAR frame
    images: torch.Tensor  # (6, 3, H, W) normalised
    intrinsics: torch.Tensor  # (6, 3, 3)
    camera_to_lidar: torch.Tensor  # (6, 4, 4)
    image_transform: torch.Tensor  # (6, 3, 3): original pixel -> input pixel
    lidar_augmentation: torch.Tensor  # (4, 4): LiDAR frame -> augmented frame
    camera_valid: torch.Tensor  # (6,) bool


@dataclass
class Targets:
    boxes: Boxes3D  # in the augmented frame
    map_masks: torch.Tensor  # (6, H, W) float on the model's map grid


def image_transform(height: int, width: int, config: Config, image_scale: float) -> np.ndarray:
    """3x3 map from original pixels to input pixels: resize to the input width, crop the sky."""
    camera = config.model.camera
    scale = camera.input_width / width * image_scale
    resized_h, resized_w = height * scale, width * scale
    top = min(resized_h * camera.top_crop_fraction, resized_h - camera.input_height)
    left = (resized_w - camera.input_width) / 2
    return np.array([[scale, 0.0, -left], [0.0, scale, -top], [0.0, 0.0, 1.0]])


def _points(points: np.ndarray, matrix: np.ndarray, config: Config, rng: np.random.Generator | None) -> np.ndarray:
    xyz = points[:, :3] @ matrix[:3, :3].T
    grid, extent = config.grid, config.grid.half_extent_m
    keep = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent) & \
        (xyz[:, 2] >= grid.z_min_m) & (xyz[:, 2] < grid.z_max_m) & np.all(np.isfinite(points), axis=1)
    out = np.column_stack([xyz, points[:, 3:5]])[keep].astype(np.float32)
    limit = config.model.lidar.max_points
    if len(out) > limit:  # random at train time, evenly spaced at inference
        chosen = rng.choice(len(out), limit, replace=False) if rng is not None else \
            np.linspace(0, len(out) - 1, limit).astype(np.int64)
        out = out[np.sort(chosen)]
    return out


def map_targets(sample: Sample, augmentation: Augmentation, target: BEVGrid) -> torch.Tensor:
    """Resample the source map (LiDAR frame) onto the target grid in the augmented frame."""
    source = sample.map_source_grid
    xs, ys = target.cell_centers()
    inverse = np.linalg.inv(augmentation.lidar_matrix()[:2, :2])
    original = np.stack([xs, ys], axis=-1) @ inverse.T
    cols = np.floor((original[..., 0] - source.x_min) / source.resolution).astype(np.int64)
    rows = np.floor((original[..., 1] - source.y_min) / source.resolution).astype(np.int64)
    inside = (cols >= 0) & (cols < source.width) & (rows >= 0) & (rows < source.height)
    masks = np.zeros((sample.map_masks.shape[0],) + xs.shape, dtype=np.float32)
    masks[:, inside] = sample.map_masks[:, rows[inside], cols[inside]]
    return torch.from_numpy(masks)


def preprocess(sample: Sample, config: Config, augmentation: Augmentation | None = None,
               rng: np.random.Generator | None = None) -> tuple[ModelInputs, Targets | None]:
    """Tensors for the model, and the targets when the sample carries ground truth."""
    augmentation = augmentation or Augmentation()
    camera = config.model.camera
    lidar_matrix = augmentation.lidar_matrix()
    images, intrinsics, camera_to_lidar, transforms, valid = [], [], [], [], []
    for view in sample.cameras:
        if view.image is None:
            transform = np.eye(3)
            pixels = np.zeros((camera.input_height, camera.input_width, 3), np.float32)
        else:
            height, width = view.image.shape[:2]
            transform = image_transform(height, width, config, augmentation.image_scale)
            warped = cv2.warpAffine(view.image, transform[:2], (camera.input_width, camera.input_height),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            pixels = (warped.astype(np.float32) - IMAGE_MEAN) / IMAGE_STD
        images.append(pixels.transpose(2, 0, 1))
        intrinsics.append(view.intrinsics)
        camera_to_lidar.append(view.camera_to_lidar)
        transforms.append(transform)
        valid.append(view.image is not None)
    # A LiDAR-only sample (a LiDAR node) carries no cameras: stacks of zero views.
    stack = lambda arrays, shape: np.stack(arrays) if arrays else np.zeros((0,) + shape, np.float32)  # noqa: E731
    inputs = ModelInputs(
        points=torch.from_numpy(_points(sample.points, lidar_matrix, config, rng)),
        images=torch.from_numpy(stack(images, (3, camera.input_height, camera.input_width))),
        intrinsics=torch.tensor(stack(intrinsics, (3, 3)), dtype=torch.float32),
        camera_to_lidar=torch.tensor(stack(camera_to_lidar, (4, 4)), dtype=torch.float32),
        image_transform=torch.tensor(stack(transforms, (3, 3)), dtype=torch.float32),
        lidar_augmentation=torch.tensor(lidar_matrix, dtype=torch.float32),
        camera_valid=torch.tensor(valid, dtype=torch.bool))
    if sample.boxes is None:
        return inputs, None
    boxes = augmentation.boxes(sample.boxes)
    extent = config.grid.half_extent_m
    inside = (np.abs(boxes.center[:, 0]) < extent) & (np.abs(boxes.center[:, 1]) < extent)
    boxes = boxes.select(inside)
    map_masks = map_targets(sample, augmentation, config.map_grid.bev) if sample.map_masks is not None else \
        torch.zeros((6, config.map_grid.bev.height, config.map_grid.bev.width))
    return inputs, Targets(boxes, map_masks)


@dataclass
class Batch:
    """Samples stacked for the model: points carry their sample index in column 0."""

    points: torch.Tensor  # (sum N, 6): batch index, x, y, z, intensity, time lag
    images: torch.Tensor  # (B, 6, 3, H, W)
    intrinsics: torch.Tensor
    camera_to_lidar: torch.Tensor
    image_transform: torch.Tensor
    lidar_augmentation: torch.Tensor
    camera_valid: torch.Tensor
    size: int

    def to(self, device) -> "Batch":
        moved = {name: getattr(self, name).to(device) for name in
                 ("points", "images", "intrinsics", "camera_to_lidar", "image_transform", "lidar_augmentation",
                  "camera_valid")}
        return Batch(size=self.size, **moved)


def collate(inputs: list[ModelInputs]) -> Batch:
    points = torch.cat([torch.cat([torch.full((len(x.points), 1), float(i)), x.points], dim=1)
                        for i, x in enumerate(inputs)])
    stack = lambda name: torch.stack([getattr(x, name) for x in inputs])  # noqa: E731
    return Batch(points, stack("images"), stack("intrinsics"), stack("camera_to_lidar"), stack("image_transform"),
                 stack("lidar_augmentation"), stack("camera_valid"), len(inputs))
