"""The Modality-General Fusion Module (MGFM): a learned BEV query refined by deformable
query self-attention, then symmetric deformable cross-attention over the LiDAR and camera
BEV maps, then an FFN, each followed by Add & Norm. The refined query is the fused map.

The query and its positional embedding are learned per BEV cell; the mask generators of
the distillation stage start from them.

`ConvFuser` is BEVFusion's fuser, the comparison the paper uses to motivate the MGFM:
concatenate the two BEV maps, one conv-BN-ReLU. It has no query.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.config import FusionConfig

from .deformable_attention import DeformableAttention
from .layers import conv_bn_relu


def reference_points(height: int, width: int, device=None) -> torch.Tensor:
    """(H*W, 2) cell centres as (x, y) in [0, 1], row-major like the flattened maps."""
    ys, xs = torch.meshgrid((torch.arange(height, device=device) + 0.5) / height,
                            (torch.arange(width, device=device) + 0.5) / width, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


class CrossModalAttention(nn.Module):
    """Both modalities sampled by the same mechanism with equal standing."""

    def __init__(self, dim: int, config: FusionConfig):
        super().__init__()
        self.mode = config.symmetric_mode
        if self.mode == "levels":  # one attention whose two levels are the two modalities
            self.attention = DeformableAttention(dim, config.heads, 2, config.points)
        elif self.mode == "branches":  # one attention per modality, averaged
            self.branches = nn.ModuleList(DeformableAttention(dim, config.heads, 1, config.points) for _ in range(2))
        else:
            raise ValueError(f"fusion.symmetric_mode must be 'levels' or 'branches', not '{self.mode}'")

    def forward(self, query, reference, lidar, camera) -> torch.Tensor:
        if self.mode == "levels":
            return self.attention(query, reference, [lidar, camera])
        return 0.5 * (self.branches[0](query, reference, [lidar]) + self.branches[1](query, reference, [camera]))


class FusionLayer(nn.Module):
    def __init__(self, dim: int, config: FusionConfig):
        super().__init__()
        self.self_attention = DeformableAttention(dim, config.heads, 1, config.points)
        self.cross_attention = CrossModalAttention(dim, config)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_channels), nn.ReLU(inplace=True),
                                 nn.Linear(config.ffn_channels, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, query, position, reference, shape, lidar, camera) -> torch.Tensor:
        height, width = shape
        as_map = query.transpose(1, 2).reshape(query.shape[0], -1, height, width)
        query = self.norms[0](query + self.self_attention(query + position, reference, [as_map]))
        query = self.norms[1](query + self.cross_attention(query + position, reference, lidar, camera))
        return self.norms[2](query + self.ffn(query))


class MGFM(nn.Module):
    def __init__(self, lidar_channels: int, camera_channels: int, dim: int, height: int, width: int,
                 config: FusionConfig):
        super().__init__()
        if height % config.downsample or width % config.downsample:
            raise ValueError(f"BEV grid {height}x{width} is not divisible by fusion.downsample={config.downsample}")
        self.output_size = (height, width)
        height, width = height // config.downsample, width // config.downsample
        self.height, self.width = height, width
        self.bev_query = nn.Parameter(torch.randn(height * width, dim) * 0.02)
        self.bev_position = nn.Parameter(torch.randn(height * width, dim) * 0.02)
        self.lidar_projection = nn.Conv2d(lidar_channels, dim, 1)
        self.camera_projection = nn.Conv2d(camera_channels, dim, 1)
        self.layers = nn.ModuleList(FusionLayer(dim, config) for _ in range(config.layers))
        self.register_buffer("reference", reference_points(height, width), persistent=False)
        self.refine = conv_bn_relu(dim, dim) if config.downsample > 1 else nn.Identity()
        self.out_channels = dim

    def forward(self, lidar_bev: torch.Tensor, camera_bev: torch.Tensor) -> torch.Tensor:
        batch = lidar_bev.shape[0]
        lidar, camera = self.lidar_projection(lidar_bev), self.camera_projection(camera_bev)
        query = self.bev_query.expand(batch, -1, -1)
        position = self.bev_position.expand(batch, -1, -1)
        reference = self.reference.expand(batch, -1, -1)
        for layer in self.layers:
            query = layer(query, position, reference, (self.height, self.width), lidar, camera)
        fused = query.transpose(1, 2).reshape(batch, -1, self.height, self.width)
        if fused.shape[-2:] != self.output_size:
            fused = self.refine(F.interpolate(fused, size=self.output_size, mode="bilinear", align_corners=False))
        return fused


class ConvFuser(nn.Module):
    """BEVFusion's fuser: the LiDAR and camera BEV maps concatenated, then conv3x3-BN-ReLU."""

    def __init__(self, lidar_channels: int, camera_channels: int, dim: int):
        super().__init__()
        self.fuse = conv_bn_relu(lidar_channels + camera_channels, dim)
        self.out_channels = dim

    def forward(self, lidar_bev: torch.Tensor, camera_bev: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([lidar_bev, camera_bev], dim=1))


FUSERS = ("mgfm", "convfuser")
