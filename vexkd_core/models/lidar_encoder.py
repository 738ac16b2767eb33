"""Dynamic pillars (PointPillars-style PFN) max-pooled onto the BEV grid.

Two halves: `pillar_inputs` (which pillar each point is in and its ten PFN inputs) has no
weights and stays outside an exported ONNX graph; `LidarEncoder` (PFN and pooling) is the
network. The model's forward calls both, the ONNX runtime calls the first and the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vexkd_core.structures import BEVGrid

from .pooling import CellPool, PoolLayout

POINT_INPUTS = 10  # x, y, z, intensity, lag, offsets to the pillar centre (2) and to the pillar mean (3)


@dataclass
class PillarInputs:
    features: torch.Tensor  # (M, POINT_INPUTS) of the points on the grid
    cell: torch.Tensor  # (M,) int64: flat (batch, row, column) cell of each


def pillar_inputs(points: torch.Tensor, grid: BEVGrid, batch_size: int) -> PillarInputs:
    """points (M, 6): batch index, x, y, z, intensity, lag; points off the grid are left out."""
    column = torch.floor((points[:, 1] - grid.x_min) / grid.resolution).long()
    row = torch.floor((points[:, 2] - grid.y_min) / grid.resolution).long()
    inside = (column >= 0) & (column < grid.width) & (row >= 0) & (row < grid.height)
    cell = (points[:, 0].long() * grid.height * grid.width + row * grid.width + column)[inside]
    points = points[inside]
    cells = batch_size * grid.height * grid.width
    xyz = points[:, 1:4]
    counts = torch.zeros(cells, device=points.device).index_add_(0, cell, torch.ones_like(cell, dtype=xyz.dtype))
    means = torch.zeros(cells, 3, device=points.device).index_add_(0, cell, xyz) / counts.clamp(min=1)[:, None]
    column = (cell % grid.width).to(xyz.dtype)
    row = ((cell // grid.width) % grid.height).to(xyz.dtype)
    centre = torch.stack([grid.x_min + (column + 0.5) * grid.resolution,
                          grid.y_min + (row + 0.5) * grid.resolution], dim=1)
    return PillarInputs(torch.cat([points[:, 1:6], xyz[:, :2] - centre, xyz - means[cell]], dim=1), cell)


class LidarEncoder(nn.Module):
    def __init__(self, grid: BEVGrid, channels: int):
        super().__init__()
        self.grid = grid
        self.linear = nn.Linear(POINT_INPUTS, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)
        self.pool = CellPool("max")
        self.out_channels = channels

    def forward(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        """points (M, 6): batch index, x, y, z, intensity, lag -> (B, C, H, W)."""
        pillars = pillar_inputs(points, self.grid, batch_size)
        return self.encode_pillars(pillars.features, pillars.cell, batch_size)

    def encode_pillars(self, features: torch.Tensor, cell: torch.Tensor | PoolLayout, batch_size: int) -> torch.Tensor:
        """The PFN on each point, max-pooled per pillar (empty pillars stay 0: the PFN ends in a
        ReLU). `cell`: each point's, or their PoolLayout (the exported graph's)."""
        grid = self.grid
        encoded = torch.relu(self.norm(self.linear(features)))
        bev = self.pool(encoded, cell, batch_size * grid.height * grid.width)
        return bev.view(batch_size, grid.height, grid.width, -1).permute(0, 3, 1, 2).contiguous()
