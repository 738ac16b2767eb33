"""Masked BEV feature distillation: for each feature level and each mask m, the distance of
the student's feature from the teacher's on the cells m weighs, with the teacher's features
and the masks detached.

Attention transfer (AT) is the default distance and needs no channel adapter. Its maps (the
channel-mean of squared features, flattened) are L2-normalised over the WHOLE map first, and
only then weighted by the mask: d = sum_cells m * (a_s - a_t)^2 / mean(m). A mask of all ones
is whole-map AT exactly, and how the student spreads its energy between the masked regions
and the rest is still distilled. (Normalising each masked map on its own, as masking the
features before AT does, matches only the shape inside each mask: scaling one region of the
student would change nothing.) Dividing by the mask's mean makes a small or faint mask count
per cell as the whole map does.

MSE, L1 and Smooth-L1 compare features directly, through a 1x1 adapter when the channel
counts differ, with MasKD's normalisation: sum over cells of the masked difference, divided
by the mask's sum (a mean over the masked cells), then the mean over channels.

Over the T masks of a level the distances are combined with the generator's per-sample token
weights (soft masks), or averaged over the masks that take any cell (an empty mask has
nothing to compare). Adapters live here, never in the student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("at", "mse", "l1", "smoothl1")


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_distances(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x 2 -> (B,): the whole-map AT distance of each sample."""
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(dim=1)


def masked_attention_distances(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x 2, masks (B, T, H, W) -> (B, T): AT on whole-map normalised maps,
    each mask's weighted sum of the squared differences over its mean."""
    squared = (attention_map(student) - attention_map(teacher)).pow(2)[:, None]  # (B, 1, HW)
    weights = masks.flatten(2)
    return (weights * squared).sum(dim=2) / weights.mean(dim=2).clamp(min=1e-12)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "at":
        return attention_distances(student, teacher).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "l1":
        return F.l1_loss(student, teacher)
    if kind == "smoothl1":
        return F.smooth_l1_loss(student, teacher)
    raise ValueError(f"distance must be one of {DISTANCES}, not '{kind}'")


class MaskedDistillLoss(nn.Module):
    """The masked feature distance at one level, combined over its masks."""

    def __init__(self, student_channels: int, teacher_channels: int, kind: str = "at"):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, not '{kind}'")
        self.kind = kind
        needs_adapter = kind != "at" and student_channels != teacher_channels
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1) if needs_adapter else nn.Identity()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor,
                token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """student/teacher (B, C, H, W); masks (B, T, H, W); token_weights (B, T) summing to 1
        per sample, or None: the mean over the (sample, mask) pairs where the mask takes a cell
        (0 when none does). Teacher, masks and weights get no gradient."""
        student = self.adapter(student.float())
        teacher, masks = teacher.detach().float(), masks.detach().float()
        distances = self._distances(student, teacher, masks)  # (B, T)
        if token_weights is not None:
            return (distances * token_weights.detach().float()).sum(dim=1).mean()
        picked = (masks.flatten(2).sum(-1) > 0).float()
        return (distances * picked).sum() / picked.sum().clamp(min=1)

    def _distances(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.kind == "at":
            return masked_attention_distances(student, teacher, masks)
        difference = student - teacher  # (B, C, H, W)
        # MSE and L1 factor into (mask term) x (difference term) per cell, so the sum over
        # cells is one contraction and no (B, T, C, H, W) tensor is made; masks are >= 0.
        if self.kind == "mse":
            summed = torch.einsum("bthw,bchw->btc", masks.pow(2), difference.pow(2))
        elif self.kind == "l1":
            summed = torch.einsum("bthw,bchw->btc", masks, difference.abs())
        else:
            weights = masks[:, :, None]  # (B, T, 1, H, W)
            summed = F.smooth_l1_loss(weights * student[:, None], weights * teacher[:, None],
                                      reduction="none").sum(dim=(3, 4))
        return (summed / masks.sum(dim=(2, 3))[:, :, None].clamp(min=1e-12)).mean(dim=2)  # over channels
