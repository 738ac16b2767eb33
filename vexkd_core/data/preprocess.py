"""Sample -> model tensors: the single preprocessing path of training, evaluation and ROS.

Train-time augmentation is BEVFusion's: one rotation / scale / translation / x- and y-flip of
the LiDAR frame (GlobalRotScaleTrans, RandomFlip3D) and a resize / crop / rotation / mirror
per camera (ImageAug3D). The LiDAR part is one 4x4 matrix that moves points, boxes and the
map together; both parts reach the camera encoder as matrices, so its frustum stays
consistent with them. Each part is switched in AugmentConfig, as is a sensor randomisation
(intensity scale, point dropout, mount height) for models that will meet another LiDAR.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vexkd_core.config import AugmentConfig, Config
from vexkd_core.geometry import transform_points
from vexkd_core.structures import BEVGrid, Boxes3D

from .sample import CAMERA_CHANNELS, Sample

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


@dataclass(frozen=True)
class ImageAugmentation:
    """One camera's image jitter; the defaults give the deterministic inference transform."""

    scale: float = 1.0  # times the fit-to-width resize
    crop_position: float = 0.5  # where the crop sits in the resized image's spare width: 0 left, 1 right
    rotation: float = 0.0  # radians about the input image's centre
    flip: bool = False  # mirrored left-right

    @classmethod
    def random(cls, config: AugmentConfig, rng: np.random.Generator) -> "ImageAugmentation":
        # Only the parts that are on draw, so a preset with the scale alone draws one number.
        limit = config.image_rotation_deg
        return cls(scale=float(rng.uniform(*config.image_scale)),
                   crop_position=float(rng.uniform()) if config.image_crop_jitter else 0.5,
                   rotation=float(np.radians(rng.uniform(-limit, limit))) if limit else 0.0,
                   flip=bool(config.image_flip and rng.random() < 0.5))


@dataclass(frozen=True)
class Augmentation:
    """One draw of the train-time augmentation; the defaults are the identity."""

    rotation: float = 0.0  # radians about +z
    scale: float = 1.0
    flip_y: bool = False  # y -> -y
    image_scale: float = 1.0  # every camera's resize jitter when `cameras` is empty
    flip_x: bool = False  # x -> -x
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, applied before the flips
    cameras: tuple[ImageAugmentation, ...] = ()  # one per camera, CAMERA_CHANNELS order
    intensity_scale: float = 1.0  # every point's intensity times this
    point_keep: float = 1.0  # the share of points kept, each at random (needs preprocess's rng)

    @classmethod
    def random(cls, config: AugmentConfig, rng: np.random.Generator) -> "Augmentation":
        # The tiny preset's draws (rotation, scale, y-flip, one image scale) keep their order and
        # nothing else draws while its parts are off: its data, demo and checkpoints stay as they were.
        rotation = float(np.radians(rng.uniform(-config.rotation_deg, config.rotation_deg)))
        scale = float(rng.uniform(*config.scale))
        flip_y = bool(config.flip and rng.random() < 0.5)
        if config.image_per_camera:
            cameras = tuple(ImageAugmentation.random(config, rng) for _ in CAMERA_CHANNELS)
        else:
            cameras = (ImageAugmentation.random(config, rng),) * len(CAMERA_CHANNELS)
        flip_x = bool(config.flip_x and rng.random() < 0.5)
        translation = tuple(float(t) for t in rng.normal(0.0, config.translation_std_m, 3)) \
            if config.translation_std_m else (0.0, 0.0, 0.0)
        # Sensor randomisation, each part drawn only when on (so the presets draw as before).
        intensity_scale = float(rng.uniform(*config.intensity_scale)) \
            if tuple(config.intensity_scale) != (1.0, 1.0) else 1.0
        point_keep = 1.0 - float(rng.uniform(0.0, config.point_dropout)) if config.point_dropout else 1.0
        if config.height_jitter_m:  # a mount height moves points and boxes alike: part of the translation
            translation = (*translation[:2], translation[2] + float(rng.normal(0.0, config.height_jitter_m)))
        return cls(rotation=rotation, scale=scale, flip_y=flip_y, flip_x=flip_x, translation=translation,
                   cameras=cameras, intensity_scale=intensity_scale, point_keep=point_keep)

    def camera(self, index: int) -> ImageAugmentation:
        return self.cameras[index] if self.cameras else ImageAugmentation(scale=self.image_scale)

    def lidar_matrix(self) -> np.ndarray:
        """4x4 map from the LiDAR frame to the augmented frame: rotate, scale and translate, then
        flip (BEVFusion's GlobalRotScaleTrans before RandomFlip3D)."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        flips = np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0])
        matrix = np.eye(4)
        matrix[:3, :3] = flips @ (self.scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
        matrix[:3, 3] = flips @ np.asarray(self.translation)
        return matrix

    def boxes(self, boxes: Boxes3D) -> Boxes3D:
        matrix = self.lidar_matrix()
        yaw = boxes.yaw + self.rotation
        if self.flip_x:  # the heading (cos, sin) becomes (-cos, sin)
            yaw = np.pi - yaw
        if self.flip_y:  # (cos, sin) becomes (cos, -sin)
            yaw = -yaw
        # Velocity is a direction: no translation, but scaled with the frame as BEVFusion scales it.
        return Boxes3D(transform_points(matrix, boxes.center), boxes.size_lwh * self.scale,
                       np.arctan2(np.sin(yaw), np.cos(yaw)), boxes.velocity @ matrix[:2, :2].T,
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
    map_masks: torch.Tensor | None  # (6, H, W) float on the model's map grid; None: the sample has no map


def image_transform(height: int, width: int, config: Config,
                    augmentation: ImageAugmentation = ImageAugmentation()) -> np.ndarray:
    """3x3 map from original pixels to input pixels: resize to the input width (times the jitter),
    crop the sky and the sides, then mirror and rotate about the input's centre (ImageAug3D's order)."""
    camera = config.model.camera
    scale = camera.input_width / width * augmentation.scale
    resized_h, resized_w = height * scale, width * scale
    top = min(resized_h * camera.top_crop_fraction, resized_h - camera.input_height)
    left = (resized_w - camera.input_width) * augmentation.crop_position  # negative: padded, not cropped
    matrix = np.array([[scale, 0.0, -left], [0.0, scale, -top], [0.0, 0.0, 1.0]])
    # Pixel centres sit at integer coordinates (cv2.warpAffine's convention): the last column is W - 1.
    if augmentation.flip:
        matrix = np.array([[-1.0, 0.0, camera.input_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
    if augmentation.rotation:
        centre = ((camera.input_width - 1) / 2, (camera.input_height - 1) / 2)
        rotate = cv2.getRotationMatrix2D(centre, float(np.degrees(augmentation.rotation)), 1.0)
        matrix = np.vstack([rotate, [0.0, 0.0, 1.0]]) @ matrix
    return matrix


def _points(points: np.ndarray, matrix: np.ndarray, config: Config, rng: np.random.Generator | None) -> np.ndarray:
    """(N, 5) points -> those on the grid after `matrix`, float32. Written for the ~140k points
    of a node's every frame: the columns go straight into the float32 result (the same values
    as transforming and stacking in float64, half the time)."""
    xyz = transform_points(matrix, points[:, :3])  # compared in float64
    grid, extent = config.grid, config.grid.half_extent_m
    # Comparisons with NaN or inf are False: they drop non-finite coordinates as well.
    keep = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent) & \
        (xyz[:, 2] >= grid.z_min_m) & (xyz[:, 2] < grid.z_max_m) & \
        np.isfinite(points[:, 3]) & np.isfinite(points[:, 4])
    out = np.empty((int(keep.sum()), 5), np.float32)
    out[:, :3] = xyz[keep]
    out[:, 3:] = points[keep, 3:5]
    limit = config.model.lidar.max_points
    if len(out) > limit:  # random at train time, evenly spaced at inference
        chosen = rng.choice(len(out), limit, replace=False) if rng is not None else \
            np.linspace(0, len(out) - 1, limit).astype(np.int64)
        out = out[np.sort(chosen)]
    return out


def _randomised_sensor(points: np.ndarray, augmentation: Augmentation, rng: np.random.Generator | None) -> np.ndarray:
    """The points as another LiDAR might return them: some dropped at random, intensities
    scaled (a new array: `points` may be a cached sample's)."""
    if augmentation.point_keep < 1.0:
        if rng is None:
            raise ValueError("point dropout draws from the training rng; preprocess() got none")
        points = points[rng.random(len(points)) < augmentation.point_keep]
    if augmentation.intensity_scale != 1.0:
        points = points.copy()
        points[:, 3] *= augmentation.intensity_scale
    return points


def map_targets(sample: Sample, augmentation: Augmentation, target: BEVGrid) -> torch.Tensor:
    """Resample the source map (LiDAR frame) onto the target grid in the augmented frame."""
    source = sample.map_source_grid
    xs, ys = target.cell_centers()
    matrix = augmentation.lidar_matrix()  # block-diagonal: x and y do not depend on z
    original = (np.stack([xs, ys], axis=-1) - matrix[:2, 3]) @ np.linalg.inv(matrix[:2, :2]).T
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
    for index, view in enumerate(sample.cameras):
        if view.image is None:
            transform = np.eye(3)
            pixels = np.zeros((camera.input_height, camera.input_width, 3), np.float32)
        else:
            height, width = view.image.shape[:2]
            transform = image_transform(height, width, config, augmentation.camera(index))
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
        points=torch.from_numpy(_points(_randomised_sensor(sample.points, augmentation, rng), lidar_matrix, config,
                                        rng)),
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
    map_masks = map_targets(sample, augmentation, config.map_grid.bev) if sample.map_masks is not None else None
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
