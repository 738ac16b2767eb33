"""Camera-only BEV encoder: image backbone + FPN + Lift-Splat-Shoot with learned depth.

The backbone is the small in-repo ResNet-style network or a torchvision-layout ResNet
(`model.camera.backbone`). The encoder receives images and calibration only, never
LiDAR, so a camera student needs no LiDAR at inference; at training time its depth logits
are supervised with LiDAR depth from outside (depth_supervision.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.config import CameraConfig
from vexkd_core.structures import BEVGrid

from .layers import conv_bn_relu
from .pooling import CellPool, PoolLayout
from .resnet import ResNet, load_pretrained, resnet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """The "small" backbone: stem (stride 4) then one stage per entry of `channels`, strides 4, 8, 16, 32."""

    def __init__(self, channels: tuple[int, ...], blocks_per_stage: int = 1):
        super().__init__()
        self.out_channels = tuple(channels)
        self.stem = nn.Sequential(conv_bn_relu(3, channels[0], 2, 7), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], channels[0]
        for index, cout in enumerate(channels):
            blocks = [BasicBlock(cin, cout, 1 if index == 0 else 2)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class FPN(nn.Module):
    """Top-down merge of the stride-8/16/32 maps into one stride-8 map."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.smooth = conv_bn_relu(out_channels, out_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:], mode="nearest")
        return self.smooth(merged)


def build_backbone(config: CameraConfig) -> ResNetBackbone | ResNet:
    """The network `config.backbone` names; its `out_channels` are its four stage widths."""
    if config.backbone == "small":
        return ResNetBackbone(config.backbone_channels)
    return resnet(config.backbone)


class CameraEncoder(nn.Module):
    def __init__(self, config: CameraConfig, grid: BEVGrid, z_range: tuple[float, float], bev_channels: int):
        super().__init__()
        self.config, self.grid = config, grid
        self.backbone = build_backbone(config)
        if config.pretrained_backbone:
            load_pretrained(self.backbone, Path(config.pretrained_backbone), config.backbone)
        # Statistics estimated on ImageNet's large batches are better than ones re-estimated
        # from the few images of a detection batch, and training them away loses the pretraining.
        self.backbone_norm_eval = bool(config.pretrained_backbone) and config.backbone_norm_eval
        self.neck = FPN(self.backbone.out_channels[1:], config.feature_channels)
        self.depth_bins = config.depth_bins
        self.depth_and_context = nn.Sequential(conv_bn_relu(config.feature_channels, config.feature_channels),
                                               nn.Conv2d(config.feature_channels, self.depth_bins + bev_channels, 1))
        self.pool = CellPool("sum")
        self.bev_smooth = conv_bn_relu(bev_channels, bev_channels)
        self.out_channels = bev_channels
        self.geometry = LiftGeometry(config, grid, z_range)
        self.train()  # backbone_norm_eval holds from construction on, not only after the trainer's first train()

    # The image stages: everything before the lift, i.e. what a camera model learns about images
    # (features and depth) rather than about the BEV grid. Another camera-reading model can hand
    # them on (`load_image_stages`), as camera BEV detectors start from a pretrained image network.
    IMAGE_STAGES = ("backbone", "neck", "depth_and_context")

    def load_image_stages(self, other: CameraEncoder) -> None:
        """Copy `other`'s image stages into this encoder; ValueError where their depth bins
        mean other depths, RuntimeError (load_state_dict's) where their shapes differ."""
        depths = ("depth_min_m", "depth_max_m", "depth_step_m")
        if [getattr(other.config, name) for name in depths] != [getattr(self.config, name) for name in depths]:
            raise ValueError("its depth bins (model.camera.depth_min_m, depth_max_m, depth_step_m) differ from "
                             "this model's: its depth logits would mean other depths")
        for name in self.IMAGE_STAGES:
            getattr(self, name).load_state_dict(getattr(other, name).state_dict())

    def train(self, mode: bool = True) -> CameraEncoder:
        """As nn.Module's, but with backbone_norm_eval the backbone's BatchNorms stay in eval mode."""
        super().train(mode)
        if self.backbone_norm_eval:
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, images, intrinsics, camera_to_lidar, image_transform, lidar_augmentation,
                camera_valid) -> torch.Tensor:
        return self.encode(images, intrinsics, camera_to_lidar, image_transform, lidar_augmentation,
                           camera_valid)[0]

    def encode(self, images, intrinsics, camera_to_lidar, image_transform, lidar_augmentation,
               camera_valid) -> tuple[torch.Tensor, torch.Tensor]:
        """The BEV map and the (B, N, D, h, w) depth logits it was lifted with (for depth supervision)."""
        return self.encode_cells(images, self.geometry.cells(intrinsics, camera_to_lidar, image_transform,
                                                             lidar_augmentation, camera_valid))

    def encode_cells(self, images: torch.Tensor, cells: torch.Tensor | PoolLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """As encode(), with the frustum's BEV cells from LiftGeometry.cells() (or their PoolLayout)."""
        batch, cameras = images.shape[:2]
        features = self.neck(self.backbone(images.flatten(0, 1))[1:])
        head = self.depth_and_context(features)
        depth_logits = head[:, :self.depth_bins]
        context = head[:, self.depth_bins:]
        lifted = depth_logits.softmax(dim=1)[:, None] * context[:, :, None]  # (B*N, C, D, h, w)
        lifted = lifted.view(batch, cameras, -1, *lifted.shape[2:]).permute(0, 1, 3, 4, 5, 2)
        bev = self.bev_smooth(self.splat(lifted, cells))
        return bev, depth_logits.view(batch, cameras, *depth_logits.shape[1:])

    def splat(self, lifted: torch.Tensor, cells: torch.Tensor | PoolLayout) -> torch.Tensor:
        """Sum-pool frustum features (B, N, D, h, w, C) into their BEV cells (B, N, D, h, w);
        points off the grid (cell B * H * W) are dropped."""
        grid = self.grid
        batch, channels = lifted.shape[0], lifted.shape[-1]
        where = cells if isinstance(cells, PoolLayout) else cells.flatten()
        bev = self.pool(lifted.flatten(0, -2), where, batch * grid.height * grid.width)
        return bev.view(batch, grid.height, grid.width, channels).permute(0, 3, 1, 2).contiguous()


class LiftGeometry(nn.Module):
    """Where Lift-Splat puts each frustum point (pixel of the stride-`feature_stride` map at the
    centre of a depth bin) on the BEV grid, from calibration and augmentation matrices alone:
    no weights, so an exported ONNX graph takes its output as an input and this stays shared
    code."""

    def __init__(self, config: CameraConfig, grid: BEVGrid, z_range: tuple[float, float]):
        super().__init__()
        self.grid, self.z_range = grid, z_range
        stride, bins = config.feature_stride, config.depth_bins
        height, width = config.input_height // stride, config.input_width // stride
        depths = config.depth_min_m + (torch.arange(bins) + 0.5) * config.depth_step_m
        v, u = torch.meshgrid((torch.arange(height) + 0.5) * stride, (torch.arange(width) + 0.5) * stride,
                              indexing="ij")
        frustum = torch.stack([u.expand(bins, -1, -1), v.expand(bins, -1, -1),
                               depths[:, None, None].expand(-1, height, width)], dim=-1)
        self.register_buffer("frustum", frustum, persistent=False)  # (D, h, w, 3): input pixel u, v and depth

    def frustum_in_lidar(self, intrinsics, camera_to_lidar, image_transform, lidar_augmentation) -> torch.Tensor:
        """(B, N, D, h, w, 3) positions of the frustum points in the (augmented) LiDAR frame, in
        float32 even under autocast: bfloat16 moves a sixth of them into another BEV cell (and off
        the cells depth supervision projects the LiDAR points to)."""
        with torch.autocast(self.frustum.device.type, enabled=False):
            pixels = torch.cat([self.frustum[..., :2], torch.ones_like(self.frustum[..., :1])], dim=-1)
            original = torch.einsum("bnij,dhwj->bndhwi", torch.linalg.inv(image_transform), pixels)
            rays = torch.einsum("bnij,bndhwj->bndhwi", torch.linalg.inv(intrinsics), original)
            points = rays / rays[..., 2:3] * self.frustum[..., 2:3]
            to_lidar = lidar_augmentation[:, None] @ camera_to_lidar
            return torch.einsum("bnij,bndhwj->bndhwi", to_lidar[..., :3, :3], points) + \
                to_lidar[:, :, None, None, None, :3, 3]

    def cells(self, intrinsics, camera_to_lidar, image_transform, lidar_augmentation,
              camera_valid) -> torch.Tensor:
        """(B, N, D, h, w) int64 flat (batch, row, column) cell of every frustum point; points off
        the grid, outside the z range or of a missing camera get B * H * W, one past the grid."""
        grid = self.grid
        positions = self.frustum_in_lidar(intrinsics, camera_to_lidar, image_transform, lidar_augmentation)
        column = torch.floor((positions[..., 0] - grid.x_min) / grid.resolution).long()
        row = torch.floor((positions[..., 1] - grid.y_min) / grid.resolution).long()
        keep = (column >= 0) & (column < grid.width) & (row >= 0) & (row < grid.height) & \
            (positions[..., 2] >= self.z_range[0]) & (positions[..., 2] < self.z_range[1]) & \
            camera_valid[:, :, None, None, None]
        batch = positions.shape[0]
        batch_index = torch.arange(batch, device=positions.device).view(batch, 1, 1, 1, 1)
        cell = (batch_index * grid.height + row) * grid.width + column
        return torch.where(keep, cell, torch.full_like(cell, batch * grid.height * grid.width))
