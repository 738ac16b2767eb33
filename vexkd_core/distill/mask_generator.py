"""BEV-query-guided mask generator (one per task x feature level).

Its query starts as the trained teacher's MGFM BEV query and positional embedding (or
random, for the ablation, and for a ConvFuser teacher, which has no query). N blocks of
deformable cross-attention from the query into the frozen teacher's feature map, each with
an FFN, then a linear head and a sigmoid give T soft spatial masks, resized to the feature
map. How they are trained (and why they cannot all become 1) is in vexkd_train/masks.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.models.deformable_attention import DeformableAttention
from vexkd_core.models.fusion import MGFM, reference_points

LEVELS = ("low", "high")


class MaskBlock(nn.Module):
    def __init__(self, dim: int, heads: int, points: int, ffn_channels: int):
        super().__init__()
        self.attention = DeformableAttention(dim, heads, 1, points)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_channels), nn.ReLU(inplace=True), nn.Linear(ffn_channels, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))

    def forward(self, query, position, reference, value) -> torch.Tensor:
        query = self.norms[0](query + self.attention(query + position, reference, [value]))
        return self.norms[1](query + self.ffn(query))


class MaskGenerator(nn.Module):
    def __init__(self, feature_channels: int, query: torch.Tensor, position: torch.Tensor, query_size: tuple[int, int],
                 masks: int, blocks: int, heads: int, points: int, ffn_channels: int):
        super().__init__()
        dim = query.shape[1]
        self.query_size = query_size
        self.query = nn.Parameter(query.detach().clone())
        self.position = nn.Parameter(position.detach().clone())
        self.value_projection = nn.Conv2d(feature_channels, dim, 1)
        self.blocks = nn.ModuleList(MaskBlock(dim, heads, points, ffn_channels) for _ in range(blocks))
        self.head = nn.Linear(dim, masks)
        self.register_buffer("reference", reference_points(*query_size), persistent=False)

    @classmethod
    def from_teacher(cls, fusion: nn.Module, feature_channels: int, masks: int, blocks: int, heads: int, points: int,
                     ffn_channels: int, random_query: bool = False, seed: int = 0,
                     query_size: tuple[int, int] = (0, 0), query_dim: int = 0) -> "MaskGenerator":
        """The VeXKD generator: query and position copied from the teacher's MGFM (or random
        with the same shape and scale, for the ablation). A fuser without a query (ConvFuser)
        takes a random query of `query_size` cells x `query_dim` channels."""
        if isinstance(fusion, MGFM):
            query, position = fusion.bev_query.detach(), fusion.bev_position.detach()
            query_size = (fusion.height, fusion.width)
            # The ablation's random query keeps the learned one's shape and scale.
            shape, scales = query.shape, (query.std(), position.std())
        elif not random_query:
            raise ValueError("this teacher's fuser has no BEV query to start the mask generators from: "
                             "use --random-query")
        else:
            shape, scales = (query_size[0] * query_size[1], query_dim), (0.02, 0.02)  # the MGFM's initial scale
        if random_query:
            generator = torch.Generator().manual_seed(seed)
            query = torch.randn(shape, generator=generator) * scales[0]
            position = torch.randn(shape, generator=generator) * scales[1]
        return cls(feature_channels, query, position, query_size, masks, blocks, heads, points, ffn_channels)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W) -> masks (B, T, H, W) in [0, 1]."""
        batch = feature.shape[0]
        value = self.value_projection(feature)
        query = self.query.expand(batch, -1, -1)
        position = self.position.expand(batch, -1, -1)
        reference = self.reference.expand(batch, -1, -1)
        for block in self.blocks:
            query = block(query, position, reference, value)
        logits = self.head(query).transpose(1, 2).reshape(batch, -1, *self.query_size)
        return torch.sigmoid(F.interpolate(logits, size=feature.shape[-2:], mode="bilinear", align_corners=False))


def dice_overlap(masks: torch.Tensor) -> torch.Tensor:
    """Mean Dice coefficient over all pairs of masks (B, T, H, W): the diversity penalty."""
    count = masks.shape[1]
    if count < 2:
        return masks.new_zeros(())
    flat = masks.flatten(2)
    intersection = flat @ flat.transpose(1, 2)  # (B, T, T)
    energy = intersection.diagonal(dim1=1, dim2=2)
    dice = 2 * intersection / (energy[:, :, None] + energy[:, None, :] + 1e-6)
    pairs = torch.triu_indices(count, count, offset=1, device=masks.device)
    return dice[:, pairs[0], pairs[1]].mean()


def indecision(masks: torch.Tensor) -> torch.Tensor:
    """Mean of m (1 - m): 0 for masks of zeros and ones, 0.25 for masks of 0.5."""
    return (masks * (1 - masks)).mean()


def area_excess(masks: torch.Tensor, budget: float) -> torch.Tensor:
    """How far each mask's mean value (its share of the map) exceeds `budget`, averaged."""
    return torch.relu(masks.flatten(2).mean(-1) - budget).mean()
