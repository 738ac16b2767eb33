"""BEV-query-guided mask generator (one per task x feature level).

Its query (QUERIES) is the trained teacher's MGFM BEV query, copied and then trained
(`teacher`, the paper's); random with the same shape and scale (`random`, the ablation, and
for a ConvFuser teacher, which has no query); or, per sample, the teacher's fused BEV map,
the MGFM's output (`fused`: what the query became for this scene, not trained). The
positional embedding is the teacher's, copied. N blocks of deformable cross-attention from
the query into the frozen teacher's feature map, each with an FFN, give every query cell a
state; a head turns the states into T masks, resized to the feature map. Two heads:

- `SoftMaskGenerator` (the default, MasKD's masks): m_t = sigmoid(w_t . state), a logit with
  no bias on a shift-free normalised state, so a constant mask is not representable; masks
  are soft and may overlap, and a faint one weighs its cells down rather than dropping them.
  Per sample, token weights p_t (MasKD's softmax over a pooled convolution of the feature)
  say how much each mask counts.
- `DecidedMaskGenerator` (ours, `--mask-kind decided`): a softmax over T masks and a
  background gives each cell's shares; each cell goes wholly to its largest share, so the
  masks are 0/1 and disjoint.

How they are trained is in vexkd_train/masks.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.models.deformable_attention import DeformableAttention
from vexkd_core.models.fusion import MGFM, reference_points

LEVELS = ("low", "high")
QUERIES = ("teacher", "random", "fused")


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
    """The query and its blocks; subclasses add the head that makes masks of the states."""

    def __init__(self, feature_channels: int, query: torch.Tensor | None, position: torch.Tensor,
                 query_size: tuple[int, int], masks: int, blocks: int, heads: int, points: int, ffn_channels: int):
        """`query` None: each sample's fused BEV map is the query (`fused`)."""
        super().__init__()
        dim = position.shape[1]
        self.query_size, self.mask_count = query_size, masks
        self.query = None if query is None else nn.Parameter(query.detach().clone())
        self.position = nn.Parameter(position.detach().clone())
        self.value_projection = nn.Conv2d(feature_channels, dim, 1)
        self.blocks = nn.ModuleList(MaskBlock(dim, heads, points, ffn_channels) for _ in range(blocks))
        self.register_buffer("reference", reference_points(*query_size), persistent=False)

    @classmethod
    def from_teacher(cls, fusion: nn.Module, feature_channels: int, masks: int, blocks: int, heads: int, points: int,
                     ffn_channels: int, query: str = "teacher", seed: int = 0,
                     query_size: tuple[int, int] = (0, 0), query_dim: int = 0) -> "MaskGenerator":
        """A generator whose `query` (of QUERIES) and position come from the teacher's MGFM.
        A fuser without a query (ConvFuser) takes a random one of `query_size` cells x
        `query_dim` channels."""
        if query not in QUERIES:
            raise ValueError(f"the generators' query must be one of {', '.join(QUERIES)}, not '{query}'")
        if isinstance(fusion, MGFM):
            learned, position = fusion.bev_query.detach(), fusion.bev_position.detach()
            query_size = (fusion.height, fusion.width)
            # The ablation's random query keeps the learned one's shape and scale.
            shape, scales = learned.shape, (learned.std(), position.std())
        elif query != "random":
            raise ValueError("this teacher's fuser has no BEV query (and no fused map on a query grid) to start the "
                             "mask generators from: use --query random")
        else:
            shape, scales = (query_size[0] * query_size[1], query_dim), (0.02, 0.02)  # the MGFM's initial scale
        if query == "random":
            generator = torch.Generator().manual_seed(seed)
            learned = torch.randn(shape, generator=generator) * scales[0]
            position = torch.randn(shape, generator=generator) * scales[1]
        # Copied raw: the MGFM's query (std ~0.02) is a few % of what a generator's first
        # attention adds (docs/lab_notes.md on the layer-normalised copy, withdrawn). The fused
        # map is layer-normalised (unit scale per cell): there the query weighs as much as that.
        return cls(feature_channels, None if query == "fused" else learned, position, query_size, masks, blocks,
                   heads, points, ffn_channels)

    def states(self, feature: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
        """feature (B, C, H, W) -> the query cells' states (B, cells, dim) after the blocks.
        `fused` (B, dim, h, w): the teacher's fused BEV map, the query of a `fused` generator."""
        batch = feature.shape[0]
        value = self.value_projection(feature)
        if self.query is not None:
            query = self.query.expand(batch, -1, -1)
        elif fused is None:
            raise ValueError("a generator whose query is the fused BEV map needs the teacher's fused map")
        else:  # the MGFM's output on its own query grid (its size unless the MGFM upsamples)
            query = F.adaptive_avg_pool2d(fused, self.query_size).flatten(2).transpose(1, 2)
        position = self.position.expand(batch, -1, -1)
        reference = self.reference.expand(batch, -1, -1)
        for block in self.blocks:
            query = block(query, position, reference, value)
        return query

    def _on_feature_map(self, per_cell: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """(B, cells, K) on the query grid -> (B, K, H, W) resized to the feature map."""
        grid = per_cell.transpose(1, 2).reshape(per_cell.shape[0], -1, *self.query_size)
        return F.interpolate(grid, size=feature.shape[-2:], mode="bilinear", align_corners=False)

    def token_weights(self, feature: torch.Tensor) -> torch.Tensor | None:
        """(B, T) how much each mask counts per sample, summing to 1; None: the masks count alike."""
        return None


class SoftMaskGenerator(MaskGenerator):
    kind = "soft"

    def __init__(self, feature_channels: int, query: torch.Tensor | None, position: torch.Tensor,
                 query_size: tuple[int, int], masks: int, blocks: int, heads: int, points: int, ffn_channels: int):
        super().__init__(feature_channels, query, position, query_size, masks, blocks, heads, points, ffn_channels)
        dim = position.shape[1]
        # No shift in the norm and no bias in the head: the logit is a linear function of
        # the state's content, so a mask cannot be constant unless every cell's state is alike.
        self.norm = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, masks, bias=False)
        nn.init.normal_(self.head.weight, 0.0, 0.01)  # MasKD's tokens: every mask starts near 0.5
        # MasKD's token weights: a 3x3 convolution, global pooling, one logit per mask.
        self.weighting = nn.Sequential(nn.Conv2d(feature_channels, feature_channels, 3, padding=1),
                                       nn.AdaptiveAvgPool2d(1), nn.Conv2d(feature_channels, masks, 1))
        for layer in (self.weighting[0], self.weighting[2]):  # MasKD's init: fan-out normal, zero bias
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (layer.kernel_size[0] ** 2 * layer.out_channels)))
            nn.init.zeros_(layer.bias)

    def forward(self, feature: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
        """feature (B, C, H, W) -> masks (B, T, H, W) in (0, 1)."""
        return self._on_feature_map(self.head(self.norm(self.states(feature, fused))), feature).sigmoid()

    def token_weights(self, feature: torch.Tensor) -> torch.Tensor:
        return self.weighting(feature).flatten(1).softmax(1)


class DecidedMaskGenerator(MaskGenerator):
    kind = "decided"

    def __init__(self, feature_channels: int, query: torch.Tensor | None, position: torch.Tensor,
                 query_size: tuple[int, int], masks: int, blocks: int, heads: int, points: int, ffn_channels: int):
        super().__init__(feature_channels, query, position, query_size, masks, blocks, heads, points, ffn_channels)
        self.head = nn.Linear(position.shape[1], masks + 1)  # the last logit is the background's

    def start_at_area(self, area: float) -> "DecidedMaskGenerator":
        """Bias the background so that, before training, the masks' shares together are about
        `area` of every cell (each mask's 1/T of it): the background then takes every cell, and
        training grows the masks from none, where the task loss wants them."""
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[-1] = math.log(self.mask_count * max(1 - area, 1e-3) / area)
        return self

    def shares(self, feature: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
        """feature (B, C, H, W) -> each mask's share of every cell (B, T, H, W): the softmax over
        the T masks and the background."""
        return self._on_feature_map(self.head(self.states(feature, fused)), feature).softmax(1)[:, :-1]

    def forward(self, feature: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
        """feature (B, C, H, W) -> masks (B, T, H, W) of 0 and 1: each cell is the mask's with
        the largest share, or no mask's where the background's is larger."""
        return decide(self.shares(feature, fused))


GENERATORS = {"soft": SoftMaskGenerator, "decided": DecidedMaskGenerator}


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


def max_normalised(masks: torch.Tensor) -> torch.Tensor:
    """Each mask (B, T, H, W) over its own largest value: soft masks' Dice then compares where
    they are high, not how high (two faint masks of the same shape are one mask)."""
    return masks / masks.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)
