"""BEV-query-guided mask generator (one per task x feature level).

Its query starts as the trained teacher's MGFM BEV query and positional embedding (or
random, for the ablation, and for a ConvFuser teacher, which has no query). N blocks of
deformable cross-attention from the query into the frozen teacher's feature map, each with
an FFN, then a linear head gives, per cell, T + 1 logits resized to the feature map: T
masks and a background. Their softmax gives each mask's share of every cell; each cell then
goes wholly to the largest share, so a generator's masks are 0/1, disjoint, and cover the
cells that no mask takes less than the background. How they are trained is in
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
        # Copied raw. The MGFM's query (std ~0.02) is a few % of what a generator's first
        # attention adds, so the masks follow the teacher's feature and are near those of a
        # random query (union Dice 0.80-0.94 on the demo). Layer-normalised (1832a31,
        # withdrawn) the query decided the masks, but this teacher's query is still 85 % its
        # random init (per-cell cosine), so the masks became a per-cell dither
        # (docs/mask_choice_results.md).
        return cls(feature_channels, query, position, query_size, masks, blocks, heads, points, ffn_channels)

    def start_at_area(self, area: float) -> "MaskGenerator":
        """Bias the background so that, before training, the masks' shares together are about
        `area` of every cell (each mask's 1/T of it): the background then takes every cell, and
        training grows the masks from none, where the task loss wants them."""
        masks = self.head.out_features - 1
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[-1] = math.log(masks * max(1 - area, 1e-3) / area)
        return self

    def shares(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W) -> each mask's share of every cell (B, T, H, W): the softmax over
        the T masks and the background."""
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

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W) -> masks (B, T, H, W) of 0 and 1: each cell is the mask's with
        the largest share, or no mask's where the background's is larger."""
        return decide(self.shares(feature))


def decide(shares: torch.Tensor) -> torch.Tensor:
    """Shares (B, T, H, W) of T masks (the background has the rest) -> each cell given wholly
    to its largest share, with the gradient of the shares (straight-through): a soft mask
    could keep the task working by scaling the whole feature down, which attention transfer
    turns back into whole-map distillation; a decided one can only keep or drop a cell."""
    with torch.no_grad():
        candidates = torch.cat([shares, 1 - shares.sum(1, keepdim=True)], 1)  # the background last
        hard = torch.zeros_like(candidates).scatter_(1, candidates.argmax(1, keepdim=True), 1.0)
    return hard[:, :-1] + (shares - shares.detach())  # exactly 0 and 1, with the shares' gradient


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


def area_error(masks: torch.Tensor, area: float) -> torch.Tensor:
    """How far each mask's share of the map is from its part of `area` (area / T), as a
    multiple of that part, per sample and mask, averaged: 0 when the T masks together cover
    `area` in equal parts, 1 for an empty mask. Two-sided, so that no mask can go empty (Dice
    alone accepts an empty mask: it overlaps nothing) and none can spread over the map."""
    part = area / masks.shape[1]
    return (masks.flatten(2).mean(-1) / part - 1).abs().mean()
