"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch with grid_sample.

Each query attends to `points` sampling locations per head and per level (feature map),
placed around its reference point by learned offsets and weighted by learned,
softmax-normalised attention weights. Initialised as in mmcv / BEVFormer: the offset bias
places each head's points on a ray of its own direction (point k at k + 1 cells), so the
heads start out looking in different directions at growing distances instead of all at
the reference cell; attention weights start uniform (zero weight and bias).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DeformableAttention(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int, points: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention = nn.Linear(dim, heads * levels * points)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        # Scaled so the larger component is 1 cell: the ring is a square, as in mmcv.
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.points + 1, dtype=torch.float32)
        bias = directions[:, None, None, :] * distances[None, None, :, None]  # (heads, 1, points, 2)
        with torch.no_grad():
            self.offsets.bias.copy_(bias.expand(self.heads, self.levels, self.points, 2).flatten())
        nn.init.zeros_(self.attention.weight)
        nn.init.zeros_(self.attention.bias)
        for projection in (self.value, self.output):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """query (B, Q, C); reference (B, Q, 2) as (x, y) in [0, 1]; maps: `levels` x (B, C, H, W)."""
        batch, queries, _ = query.shape
        heads, per_head = self.heads, self.dim // self.heads
        offsets = self.offsets(query).view(batch, queries, heads, self.levels, self.points, 2)
        weights = self.attention(query).view(batch, queries, heads, self.levels * self.points).softmax(-1)
        weights = weights.view(batch, queries, heads, self.levels, self.points)
        sampled = []
        for level, feature in enumerate(maps):
            height, width = feature.shape[-2:]
            value = self.value(feature.flatten(2).transpose(1, 2))  # (B, HW, C)
            value = value.transpose(1, 2).reshape(batch * heads, per_head, height, width)
            # Offsets are in cells of this level's map.
            scale = torch.tensor([width, height], dtype=query.dtype, device=query.device)
            location = reference[:, :, None, None, :] + offsets[:, :, :, level] / scale
            grid = (2 * location - 1).permute(0, 2, 1, 3, 4).reshape(batch * heads, queries, self.points, 2)
            sampled.append(F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        stacked = torch.stack(sampled, dim=-2)  # (B*heads, per_head, Q, levels, points)
        attention = weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, queries, self.levels, self.points)
        out = (stacked * attention).sum(dim=(-1, -2)).view(batch, heads * per_head, queries).transpose(1, 2)
        return self.output(out)
