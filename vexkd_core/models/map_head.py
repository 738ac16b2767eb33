"""BEV map segmentation head: the BEV features resampled onto the map grid, then per-class
sigmoid logits for the six map classes (trained with a focal loss, as BEVFusion)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.data.preprocess import Targets
from vexkd_core.structures import BEVGrid

from .layers import conv_bn_relu


def sampling_grid(source: BEVGrid, target: BEVGrid) -> torch.Tensor:
    """(1, H_t, W_t, 2) grid_sample coordinates of the target cell centres in the source map."""
    xs = target.x_min + (torch.arange(target.width) + 0.5) * target.resolution
    ys = target.y_min + (torch.arange(target.height) + 0.5) * target.resolution
    gx = (xs - source.x_min) / (source.width * source.resolution) * 2 - 1
    gy = (ys - source.y_min) / (source.height * source.resolution) * 2 - 1
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([xx, yy], dim=-1)[None]


def map_targets_of(targets: list[Targets], device) -> torch.Tensor:
    """The batch's map targets, (B, 6, H, W). A map head cannot learn from samples without
    map ground truth: training refuses such a dataset at start (require_map_ground_truth)."""
    if any(t.map_masks is None for t in targets):
        raise ValueError("a map head needs map ground truth, and a sample of this batch has none "
                         "(a dataset without the map expansion?)")
    return torch.stack([t.map_masks for t in targets]).to(device)


class MapHead(nn.Module):
    def __init__(self, in_channels: int, head_channels: int, num_classes: int, source: BEVGrid, target: BEVGrid):
        super().__init__()
        self.register_buffer("grid", sampling_grid(source, target), persistent=False)
        self.layers = nn.Sequential(conv_bn_relu(in_channels, head_channels), conv_bn_relu(head_channels, head_channels),
                                    nn.Conv2d(head_channels, num_classes, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        resampled = F.grid_sample(features, self.grid.expand(features.shape[0], -1, -1, -1), mode="bilinear",
                                  padding_mode="zeros", align_corners=False)
        return self.layers(resampled)

    def losses(self, logits: torch.Tensor, targets: list[Targets], box_targets=None) -> dict[str, torch.Tensor]:
        """The map loss of a batch (`box_targets`: the detection head's, not read here)."""
        return {"map": self.loss(logits, map_targets_of(targets, logits.device))}

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
        logits = logits.float()
        probability = logits.sigmoid()
        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = probability * target + (1 - probability) * (1 - target)
        alpha_t = alpha * target + (1 - alpha) * (1 - target)
        return (alpha_t * (1 - p_t) ** gamma * cross_entropy).mean() * 10.0
