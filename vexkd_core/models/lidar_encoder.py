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
    if not bool(inside.all()):  # a node's cropped cloud skips three copies of every point
        points, column, row = points[inside], column[inside], row[inside]
    cell = points[:, 0].long() * grid.height * grid.width + row * grid.width + column
    cells = batch_size * grid.height * grid.width
    xyz, device = points[:, 1:4], points.device
    counts = torch.bincount(cell, minlength=cells).to(xyz.dtype)
    means = torch.zeros(cells, 3, device=device).index_add_(0, cell, xyz) / counts.clamp(min=1)[:, None]
    # Written into one tensor column by column: concatenating strided slices took as long as
    # computing them (a node runs this on every frame, on one core).
    features = torch.empty(len(points), POINT_INPUTS, device=device, dtype=xyz.dtype)
    features[:, :5] = points[:, 1:6]
    torch.sub(points[:, 1], grid.x_min + (column.to(xyz.dtype) + 0.5) * grid.resolution, out=features[:, 5])
    torch.sub(points[:, 2], grid.y_min + (row.to(xyz.dtype) + 0.5) * grid.resolution, out=features[:, 6])
    torch.sub(xyz, means.index_select(0, cell), out=features[:, 7:])
    return PillarInputs(features, cell)


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
