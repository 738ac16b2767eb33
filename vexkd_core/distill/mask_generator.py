"""BEV-query-guided mask generator (one per task x feature level).

Its query starts as the trained teacher's MGFM BEV query and positional embedding (or
random, for the ablation, and for a ConvFuser teacher, which has no query). N blocks of
deformable cross-attention from the query into the frozen teacher's feature map, each with
an FFN, then a linear head gives, per cell, T + 1 logits resized to the feature map: T
masks and a background. A softmax over the T + 1 makes the masks compete for every cell, so
they sum to at most 1 and no two can both exceed 0.5 on a cell. How they are trained is in
vexkd_train/masks.py.
"""
from __future__ import annotations

import math

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
        self.head = nn.Linear(dim, masks + 1)  # the last logit is the background's
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

    def start_at_area(self, area: float) -> "MaskGenerator":
        """Bias the background so that, before training, the masks together cover about `area`
        of the map (each mask 1/T of it): training starts inside its budget instead of
        spending its first steps pushing the whole map out (as focal loss starts at its prior)."""
        masks = self.head.out_features - 1
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[-1] = math.log(masks * max(1 - area, 1e-3) / area)
        return self

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W) -> masks (B, T, H, W) in [0, 1], summing to at most 1 per cell."""
        batch = feature.shape[0]
        value = self.value_projection(feature)
        query = self.query.expand(batch, -1, -1)
        position = self.position.expand(batch, -1, -1)
        reference = self.reference.expand(batch, -1, -1)
        for block in self.blocks:
            query = block(query, position, reference, value)
        logits = self.head(query).transpose(1, 2).reshape(batch, -1, *self.query_size)
        logits = F.interpolate(logits, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(1)[:, :-1]


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
    """Mean Gini impurity of each cell's share among the T masks and the background
    (1 - sum of squared shares): 0 where one of them takes the whole cell. It is m(1 - m)
    twice over for one mask, and it rules out both ways of being undecided: a mask spread
    thinly over the whole map (a rescaled feature, not a selection) and masks sharing cells."""
    background = 1 - masks.sum(1)
    return (1 - masks.pow(2).sum(1) - background.pow(2)).mean()


def area_excess(masks: torch.Tensor, budget: float) -> torch.Tensor:
    """How far the share of the map the masks cover together exceeds `budget`, per sample, averaged."""
    return torch.relu(masks.sum(1).flatten(1).mean(-1) - budget).mean()


def imbalance(masks: torch.Tensor) -> torch.Tensor:
    """KL divergence of the masks' shares of the masks' energy (sum of m^2 over the batch) from
    equal shares: log T when one mask takes every selected cell and the others are empty,
    which Dice alone would accept (an empty mask overlaps nothing). Energy, not mass: a mask
    spread thinly over the whole map (0.02 everywhere, which attention transfer turns into
    whole-map distillation) has as much mass as one that takes 2 % of the cells, but 1/50 of
    their energy, so a share of the energy has to be earned by deciding cells."""
    energy = masks.pow(2).sum((0, 2, 3))
    share = energy / energy.sum().clamp(min=1e-9)
    return (share * (share * len(share)).clamp(min=1e-9).log()).sum()
