"""CenterPoint-style 3-D detection head: target assignment, loss and decoding in one place.

Per BEV cell it predicts a heatmap per class (object centres as Gaussians) and, at centres,
the sub-cell offset, height, log-size, heading as (sin, cos) and velocity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.data.preprocess import Targets
from vexkd_core.structures import BEVGrid, Boxes3D

from .layers import conv_bn_relu

# Regression channels, in this order: offset x, y | z | log l, w, h | sin, cos | vx, vy.
REGRESSION_CHANNELS = {"offset": 2, "height": 1, "size": 3, "rotation": 2, "velocity": 2}
REGRESSION_WEIGHTS = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2])
MIN_RADIUS_CELLS = 2
MAX_OBJECTS = 500


class DetectionHead(nn.Module):
    def __init__(self, in_channels: int, head_channels: int, num_classes: int, grid: BEVGrid):
        super().__init__()
        self.grid, self.num_classes = grid, num_classes
        self.shared = conv_bn_relu(in_channels, head_channels)
        self.heatmap = nn.Sequential(conv_bn_relu(head_channels, head_channels), nn.Conv2d(head_channels, num_classes, 1))
        nn.init.constant_(self.heatmap[-1].bias, -2.19)  # start at p = 0.1, as CenterNet
        self.regression = nn.ModuleDict({name: nn.Sequential(conv_bn_relu(head_channels, head_channels),
                                                             nn.Conv2d(head_channels, channels, 1))
                                         for name, channels in REGRESSION_CHANNELS.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.shared(features)
        out = {"heatmap": self.heatmap(shared)}
        out["regression"] = torch.cat([self.regression[name](shared) for name in REGRESSION_CHANNELS], dim=1)
        return out

    # ------------------------------------------------------------------ targets
    def targets(self, boxes_per_sample: list[Boxes3D], device) -> dict[str, torch.Tensor]:
        grid = self.grid
        batch = len(boxes_per_sample)
        heatmap = np.zeros((batch, self.num_classes, grid.height, grid.width), np.float32)
        index = np.zeros((batch, MAX_OBJECTS), np.int64)
        mask = np.zeros((batch, MAX_OBJECTS), np.float32)
        regression = np.zeros((batch, MAX_OBJECTS, 10), np.float32)
        for b, boxes in enumerate(boxes_per_sample):
            for k in range(min(len(boxes), MAX_OBJECTS)):
                cx = (boxes.center[k, 0] - grid.x_min) / grid.resolution
                cy = (boxes.center[k, 1] - grid.y_min) / grid.resolution
                column, row = int(cx), int(cy)
                if not (0 <= column < grid.width and 0 <= row < grid.height):
                    continue
                length, width = boxes.size_lwh[k, :2] / grid.resolution
                radius = max(MIN_RADIUS_CELLS, int(gaussian_radius(width, length)))
                draw_gaussian(heatmap[b, boxes.label[k]], column, row, radius)
                index[b, k], mask[b, k] = row * grid.width + column, 1.0
                regression[b, k] = [cx - column, cy - row, boxes.center[k, 2], *np.log(boxes.size_lwh[k]),
                                    np.sin(boxes.yaw[k]), np.cos(boxes.yaw[k]), *boxes.velocity[k]]
        return {name: torch.from_numpy(value).to(device) for name, value in
                (("heatmap", heatmap), ("index", index), ("mask", mask), ("regression", regression))}

    def batch_targets(self, targets: list[Targets], device) -> dict[str, torch.Tensor]:
        """`targets` of a batch's ground truth (its samples' boxes)."""
        return self.targets([t.boxes for t in targets], device)

    # ------------------------------------------------------------------ loss
    def losses(self, predictions: dict[str, torch.Tensor], targets: list[Targets],
               box_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The heatmap and box losses of a batch; `box_targets`: batch_targets(...) when the caller has them."""
        if box_targets is None:
            box_targets = self.batch_targets(targets, predictions["heatmap"].device)
        return self.loss(predictions, box_targets)

    def loss(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heatmap = predictions["heatmap"].float().sigmoid().clamp(1e-4, 1 - 1e-4)
        objects = targets["mask"].sum().clamp(min=1.0)
        heatmap_loss = centernet_focal_loss(heatmap, targets["heatmap"]) / objects
        regression = predictions["regression"].float().flatten(2)  # (B, 10, HW)
        gathered = regression.gather(2, targets["index"][:, None, :].expand(-1, regression.shape[1], -1)).transpose(1, 2)
        error = (gathered - targets["regression"]).abs() * targets["mask"][..., None]
        regression_loss = (error * REGRESSION_WEIGHTS.to(error.device)).sum() / objects
        return {"heatmap": heatmap_loss, "box": 0.25 * regression_loss}

    # ------------------------------------------------------------------ decoding
    def decode(self, predictions: dict[str, torch.Tensor], max_detections: int,
               score_threshold: float) -> list[Boxes3D]:
        return decode_boxes(predictions, self.grid, max_detections, score_threshold)


@torch.no_grad()
def decode_boxes(predictions: dict[str, torch.Tensor], grid: BEVGrid, max_detections: int,
                 score_threshold: float) -> list[Boxes3D]:
    """The head's heatmap and regression maps -> boxes per sample. Needs the grid only, not
    the head's weights: the ONNX runtime decodes a graph's outputs with it too."""
    heatmap = predictions["heatmap"].float().sigmoid()
    # A cell is a centre when it is the maximum of its 3x3 neighbourhood (CenterNet's NMS).
    peaks = heatmap * (F.max_pool2d(heatmap, 3, 1, 1) == heatmap)
    batch, classes, height, width = heatmap.shape
    scores, flat = peaks.flatten(1).topk(min(max_detections, classes * height * width))
    label, cell = flat // (height * width), flat % (height * width)
    regression = predictions["regression"].float().flatten(2)
    values = regression.gather(2, cell[:, None, :].expand(-1, regression.shape[1], -1)).transpose(1, 2)
    results = []
    for b in range(batch):
        keep = scores[b] > score_threshold
        v, c = values[b][keep], cell[b][keep]
        x = (c % width + v[:, 0]) * grid.resolution + grid.x_min
        y = (c // width + v[:, 1]) * grid.resolution + grid.y_min
        centre = torch.stack([x, y, v[:, 2]], dim=1)
        results.append(Boxes3D(centre.cpu().numpy().astype(np.float64),
                               v[:, 3:6].clamp(max=4.0).exp().cpu().numpy().astype(np.float64),
                               torch.atan2(v[:, 6], v[:, 7]).cpu().numpy().astype(np.float64),
                               v[:, 8:10].cpu().numpy().astype(np.float64),
                               label[b][keep].cpu().numpy(), scores[b][keep].cpu().numpy().astype(np.float64)))
    return results


def centernet_focal_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    positive = target.eq(1).float()
    negative_weight = torch.pow(1 - target, 4)
    positive_loss = torch.log(prediction) * torch.pow(1 - prediction, 2) * positive
    negative_loss = torch.log(1 - prediction) * torch.pow(prediction, 2) * negative_weight * (1 - positive)
    return -(positive_loss.sum() + negative_loss.sum())


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CornerNet's radius at which a box shifted by it still overlaps the original by min_overlap."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, column: int, row: int, radius: int) -> None:
    diameter = 2 * radius + 1
    sigma = diameter / 6
    ys, xs = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    gaussian = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    height, width = heatmap.shape
    left, right = min(column, radius), min(width - column, radius + 1)
    top, bottom = min(row, radius), min(height - row, radius + 1)
    region = heatmap[row - top:row + bottom, column - left:column + right]
    np.maximum(region, gaussian[radius - top:radius + bottom, radius - left:radius + right], out=region)
