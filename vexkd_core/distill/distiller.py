"""Masked feature distillation during student training: the trainer's extra loss.

The frozen teacher sees the same batch as the student; at each chosen level the masks
(generated, or one of the hand-made baselines) weight both feature maps before the
distance. Generated masks stay per task: the detection generator's masks give the loss
`distill_<level>_detection`, the segmentation generator's `distill_<level>_segmentation`,
each combined over its masks by the generator's token weights (soft masks) or as the mean
over those that pick cells (decided masks; MaskedDistillLoss). The multi-task
student gets both, weighted by the level's weight times the task's share of the training
weights (`train.detection_weight`, `train.map_weight`): each task's masks pull with that
task's strength, and the two add up to the level's weight, as the single loss of a
hand-made mask does, so the mask-choice rows compare masks and not loss scales. Nothing
here becomes part of the student.
"""
from __future__ import annotations

import torch
from torch import nn

from vexkd_core.models.vexkd import BEVModel, Output

from .baselines import activation_mask, foreground_mask, full_mask, gaussian_mask
from .losses import MaskedDistillLoss
from .mask_generator import MaskGenerator

MODES = ("none", "full", "foreground", "gaussian", "activation", "random-query", "fused-query", "vexkd")
# The generated modes, each with the query its generators start from (mask_generator.QUERIES).
GENERATED = {"vexkd": "teacher", "random-query": "random", "fused-query": "fused"}
BOX_MODES = ("foreground", "gaussian")  # masks placed on the ground-truth boxes: need a detection head's targets


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, BatchNorm in eval mode. The trainer only ever switches the student to
    training mode, so a frozen module stays frozen."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


class Distiller(nn.Module):
    def __init__(self, teacher: BEVModel, student: BEVModel, mode: str, levels: tuple[str, ...], distance: str,
                 weights: dict[str, float], generators: dict[str, MaskGenerator] | None = None):
        super().__init__()
        if mode not in MODES or mode == "none":
            raise ValueError(f"distill mode must be one of {MODES[1:]}, not '{mode}'")
        if mode in GENERATED and not generators:
            raise ValueError(f"--distill {mode} needs mask generators (--masks)")
        self.teacher = freeze(teacher)
        self.generators = nn.ModuleDict({k.replace("/", "__"): freeze(g) for k, g in (generators or {}).items()})
        self.mode, self.levels, self.weights = mode, levels, weights
        train = student.config.train
        weights_by_task = {"detection": train.detection_weight, "segmentation": train.map_weight}
        total = sum(weights_by_task[task] for task in train.task_names)
        self.task_weights = {task: weights_by_task[task] / total for task in train.task_names}
        if mode in BOX_MODES and "detection" not in train.task_names \
                and "detection" not in teacher.config.train.task_names:
            raise ValueError(f"--distill {mode} places its masks on the ground-truth boxes, whose targets come from a "
                             "detection head: the student or the teacher needs one (train.tasks)")
        missing = [task for task in self.task_weights if mode in GENERATED and f"{task}/low" not in generators]
        if missing:
            raise ValueError(f"the masks have no {' or '.join(missing)} generators for this student's tasks "
                             f"(train.tasks={train.tasks})")
        teacher_channels, student_channels = teacher.feature_channels, student.feature_channels
        self.losses = nn.ModuleDict({level: MaskedDistillLoss(student_channels[level], teacher_channels[level], distance)
                                     for level in levels})

    @torch.no_grad()
    def masks(self, level: str, teacher_output: Output,
              heatmap_targets: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Loss name suffix -> (masks (B, T, H, W), token weights (B, T) or None): one entry per
        task for generated masks, one shared entry for the hand-made baselines."""
        teacher_feature = getattr(teacher_output, level)
        if self.mode == "full":
            return {"": (full_mask(teacher_feature), None)}
        if self.mode == "foreground":
            return {"": (foreground_mask(heatmap_targets), None)}
        if self.mode == "gaussian":
            return {"": (gaussian_mask(heatmap_targets), None)}
        if self.mode == "activation":
            return {"": (activation_mask(teacher_feature), None)}
        generators = {task: self.generators[f"{task}__{level}"] for task in self.task_weights}
        return {f"_{task}": (generator(teacher_feature, teacher_output.fused), generator.token_weights(teacher_feature))
                for task, generator in generators.items()}

    def forward(self, student: BEVModel, batch, output: Output, targets,
                box_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`box_targets`: the student's detection targets of this batch, when the trainer has them."""
        with torch.no_grad():
            teacher_output = self.teacher(batch)
            if box_targets is None and self.mode in BOX_MODES:
                # GT-derived masks need detection targets: from the student's head, else the teacher's.
                # (Chosen here, not kept as an attribute: a module attribute would make the student a
                # submodule, and its parameters the distiller's, optimised twice.)
                box_targets = student.box_targets(targets, output.low.device)
                if box_targets is None:
                    box_targets = self.teacher.box_targets(targets, output.low.device)
        heatmap = box_targets["heatmap"] if box_targets is not None else None
        losses = {}
        for level in self.levels:
            teacher_feature = getattr(teacher_output, level)
            for suffix, (masks, token_weights) in self.masks(level, teacher_output, heatmap).items():
                weight = self.weights[level] * (self.task_weights[suffix[1:]] if suffix else 1.0)
                losses[f"distill_{level}{suffix}"] = weight * self.losses[level](getattr(output, level),
                                                                                 teacher_feature, masks, token_weights)
        return losses
