"""Dynamic pillars (PointPillars-style PFN) scattered onto the BEV grid with scatter_reduce."""
from __future__ import annotations

import torch
from torch import nn

from vexkd_core.structures import BEVGrid

POINT_INPUTS = 10  # x, y, z, intensity, lag, offsets to the pillar centre (2) and to the pillar mean (3)


class LidarEncoder(nn.Module):
    def __init__(self, grid: BEVGrid, channels: int):
        super().__init__()
        self.grid = grid
        self.linear = nn.Linear(POINT_INPUTS, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)
        self.out_channels = channels

    def pillar_index(self, points: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (batch, row, column) cell of every point, and which points fall on the grid."""
        grid = self.grid
        column = torch.floor((points[:, 1] - grid.x_min) / grid.resolution).long()
        row = torch.floor((points[:, 2] - grid.y_min) / grid.resolution).long()
        inside = (column >= 0) & (column < grid.width) & (row >= 0) & (row < grid.height)
        cell = points[:, 0].long() * grid.height * grid.width + row * grid.width + column
        return cell, inside

    def forward(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        """points (M, 6): batch index, x, y, z, intensity, lag -> (B, C, H, W)."""
        grid = self.grid
        cell, inside = self.pillar_index(points, batch_size)
        points, cell = points[inside], cell[inside]
        cells = batch_size * grid.height * grid.width
        xyz = points[:, 1:4]
        counts = torch.zeros(cells, device=points.device).index_add_(0, cell, torch.ones_like(cell, dtype=xyz.dtype))
        means = torch.zeros(cells, 3, device=points.device).index_add_(0, cell, xyz) / counts.clamp(min=1)[:, None]
        column = (cell % grid.width).to(xyz.dtype)
        row = ((cell // grid.width) % grid.height).to(xyz.dtype)
        centre = torch.stack([grid.x_min + (column + 0.5) * grid.resolution,
                              grid.y_min + (row + 0.5) * grid.resolution], dim=1)
        features = torch.cat([points[:, 1:6], xyz[:, :2] - centre, xyz - means[cell]], dim=1)
        encoded = torch.relu(self.norm(self.linear(features)))
        bev = torch.zeros(cells, encoded.shape[1], device=points.device, dtype=encoded.dtype)
        bev = bev.scatter_reduce(0, cell[:, None].expand_as(encoded), encoded, reduce="amax", include_self=True)
        return bev.view(batch_size, grid.height, grid.width, -1).permute(0, 3, 1, 2).contiguous()
