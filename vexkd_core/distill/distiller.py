"""Masked feature distillation during student training: the trainer's extra loss.

The frozen teacher sees the same batch as the student; at each chosen level the masks
(generated, or one of the hand-made baselines) weight both feature maps before the
distance. Nothing here becomes part of the student.
"""
from __future__ import annotations

import torch
from torch import nn

from vexkd_core.models.vexkd import Output

from .baselines import activation_mask, foreground_mask, full_mask, gaussian_mask
from .losses import MaskedDistillLoss
from .mask_generator import TASKS, MaskGenerator

MODES = ("none", "full", "foreground", "gaussian", "activation", "random-query", "vexkd")
GENERATED = ("random-query", "vexkd")


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, BatchNorm in eval mode. The trainer only ever switches the student to
    training mode, so a frozen module stays frozen."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


class Distiller(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module, mode: str, levels: tuple[str, ...], distance: str,
                 weights: dict[str, float], generators: dict[str, MaskGenerator] | None = None):
        super().__init__()
        if mode not in MODES or mode == "none":
            raise ValueError(f"distill mode must be one of {MODES[1:]}, not '{mode}'")
        if mode in GENERATED and not generators:
            raise ValueError(f"--distill {mode} needs mask generators (--masks)")
        self.teacher = freeze(teacher)
        self.generators = nn.ModuleDict({k.replace("/", "__"): freeze(g) for k, g in (generators or {}).items()})
        self.mode, self.levels, self.weights = mode, levels, weights
        teacher_channels = {"low": teacher.fusion.out_channels, "high": teacher.heads.decoder.out_channels}
        student_channels = {"low": student.encoder.out_channels, "high": student.heads.decoder.out_channels}
        self.losses = nn.ModuleDict({level: MaskedDistillLoss(student_channels[level], teacher_channels[level], distance)
                                     for level in levels})

    @torch.no_grad()
    def masks(self, level: str, teacher_feature: torch.Tensor, heatmap_targets: torch.Tensor) -> torch.Tensor:
        if self.mode == "full":
            return full_mask(teacher_feature)
        if self.mode == "foreground":
            return foreground_mask(heatmap_targets)
        if self.mode == "gaussian":
            return gaussian_mask(heatmap_targets)
        if self.mode == "activation":
            return activation_mask(teacher_feature)
        # Generated masks of both tasks: the student learns detection and segmentation.
        return torch.cat([self.generators[f"{task}__{level}"](teacher_feature) for task in TASKS], dim=1)

    def forward(self, student: nn.Module, batch, output: Output, targets) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_output = self.teacher(batch)
            heatmap = student.heads.detection_head.targets([t.boxes for t in targets], output.low.device)["heatmap"]
        losses = {}
        for level in self.levels:
            teacher_feature = getattr(teacher_output, level)
            masks = self.masks(level, teacher_feature, heatmap)
            losses[f"distill_{level}"] = self.weights[level] * self.losses[level](
                getattr(output, level), teacher_feature, masks)
        return losses
