"""BEVDepth's depth supervision of the LSS camera encoder, at training time only.

A batch's key-frame LiDAR points, projected into each camera's input image through the
matrices the encoder's frustum is built from (LiDAR augmentation, camera_to_lidar,
intrinsics, image_transform), give each feature cell the depth bin of its nearest point;
cross-entropy of the encoder's depth logits at those cells is the loss. Only the trainer
calls this: a camera model's forward reads no points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vexkd_core.config import CameraConfig
from vexkd_core.data.preprocess import Batch

IGNORE = -1  # a cell no point falls in, or whose nearest point lies outside the depth bins


@torch.no_grad()
def depth_targets(batch: Batch, config: CameraConfig) -> torch.Tensor:
    """(B, N, h, w) depth bin of the nearest key-frame point in each feature cell, IGNORE where none is."""
    stride, bins = config.feature_stride, config.depth_bins
    height, width = config.input_height // stride, config.input_width // stride
    cameras = batch.intrinsics.shape[1]
    # Projection in float32 even under autocast: bfloat16 would move a pixel by several cells.
    with torch.autocast(batch.points.device.type, enabled=False):
        to_camera = torch.linalg.inv(batch.lidar_augmentation[:, None].float() @ batch.camera_to_lidar.float())
        # (B, N, 3, 4) to (u z, v z, z) in input pixels: both 3x3s end in (0, 0, 1), so row 2 stays the depth.
        to_pixels = batch.image_transform.float() @ batch.intrinsics.float() @ to_camera[..., :3, :]
        # BEVDepth's key frame alone: earlier sweeps hold moving objects where they were.
        points = batch.points[batch.points[:, 5] == 0].float()
        sample = points[:, 0].long()
        xyz1 = torch.cat([points[:, 1:4], torch.ones_like(points[:, :1])], dim=1)
        projected = torch.einsum("pnij,pj->pni", to_pixels[sample], xyz1)  # (P, N, 3)
    depth = projected[..., 2]
    in_front = depth > 1e-3  # a point behind the camera projects through the image upside down; NaN is neither
    column = torch.floor(projected[..., 0] / depth / stride).long()
    row = torch.floor(projected[..., 1] / depth / stride).long()
    keep = in_front & (column >= 0) & (column < width) & (row >= 0) & (row < height) & batch.camera_valid[sample]
    camera = torch.arange(cameras, device=depth.device).expand_as(depth)
    cell = ((sample[:, None] * cameras + camera) * height + row) * width + column
    nearest = torch.full((batch.size * cameras * height * width,), float("inf"), device=depth.device)
    nearest.scatter_reduce_(0, cell[keep], depth[keep], reduce="amin")
    # As BEVDepth: a cell whose nearest point is out of the bins' range is ignored, not clamped.
    index = torch.floor((nearest - config.depth_min_m) / config.depth_step_m)
    supervised = torch.isfinite(index) & (index >= 0) & (index < bins)
    return torch.where(supervised, index, IGNORE).long().view(batch.size, cameras, height, width)


def depth_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, N, D, h, w) depth logits over the supervised cells of (B, N, h, w) targets.

    Cross-entropy rather than BEVDepth's per-bin binary cross-entropy of the softmax: the
    depth is a categorical distribution, this is its log-likelihood, and from the logits it
    stays finite in bfloat16 without BCE's clamping of log(0).
    """
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=IGNORE,
                            reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)
