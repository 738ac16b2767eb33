"""Masked BEV feature distillation: for each feature level and each mask m,
distance(m * F_student, m * F_teacher), with the teacher's features and the masks detached.

Attention transfer (AT) is the default distance: the channel-mean of squared features,
flattened and L2-normalised, compared by squared difference; it needs no channel adapter.
Because it normalises after masking, it weighs a mask's cells the same whatever the mask's
area (and a spatially uniform mask of any value is the whole map). MSE, L1 and Smooth-L1
compare features directly, through a 1x1 adapter when the channel counts differ, and are
divided per sample by the mean of m^2 (MSE) or of m (L1, Smooth-L1), so that they are a
mean over the masked cells (MasKD's normalisation), not shrunk by a small or faint mask.
Adapters live here, never in the student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("at", "mse", "l1", "smoothl1")


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_distances(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x 2 -> (B,): the AT distance of each sample."""
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(dim=1)


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
    """Mean over masks of the masked feature distance at one level."""

    def __init__(self, student_channels: int, teacher_channels: int, kind: str = "at"):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, not '{kind}'")
        self.kind = kind
        needs_adapter = kind != "at" and student_channels != teacher_channels
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1) if needs_adapter else nn.Identity()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """student/teacher (B, C, H, W); masks (B, T, H, W). Teacher and masks get no gradient.
        The mean runs over the (sample, mask) pairs where the mask picks a cell: an empty mask
        (a decided one that takes no cell of this sample, a foreground mask without objects)
        has nothing to compare, and counting its zero would shrink the loss with every empty
        mask. 0 when no mask picks anything."""
        student = self.adapter(student.float())
        teacher, masks = teacher.detach().float(), masks.detach().float()
        distances = torch.stack([self._distances(student, teacher, mask) for mask in masks.unbind(1)])  # (T, B)
        picked = (masks.flatten(2).sum(-1) > 0).T.float()  # (T, B)
        return (distances * picked).sum() / picked.sum().clamp(min=1)

    def _distances(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each sample's distance under one mask (B, H, W): (B,). AT in one batched pass (it is
        on every distilled step); the others per sample, divided by the mask's mean power."""
        mask = mask[:, None]
        if self.kind == "at":
            return attention_distances(student * mask, teacher * mask)
        power = 2 if self.kind == "mse" else 1
        per_sample = torch.stack([feature_distance(s * m, f * m, self.kind) for s, f, m in zip(student, teacher, mask)])
        return per_sample / mask.pow(power).flatten(1).mean(1).clamp(min=1e-6)
