"""The hand-made masks the paper's mask ablation compares VeXKD's generated masks with."""
from __future__ import annotations

import torch

ACTIVATION_TOP_FRACTION = 0.2  # share of BEV cells kept by the top-activation mask


def full_mask(feature: torch.Tensor) -> torch.Tensor:
    """Distil the whole map."""
    return feature.new_ones(feature.shape[0], 1, *feature.shape[-2:])


def foreground_mask(heatmap_targets: torch.Tensor) -> torch.Tensor:
    """GT foreground key points: the object-centre cells of the detection targets."""
    return heatmap_targets.eq(1).any(dim=1, keepdim=True).float()


def gaussian_mask(heatmap_targets: torch.Tensor) -> torch.Tensor:
    """GT-centred Gaussians (CenterPoint's heatmap, all classes)."""
    return heatmap_targets.max(dim=1, keepdim=True).values


def activation_mask(teacher_feature: torch.Tensor, fraction: float = ACTIVATION_TOP_FRACTION) -> torch.Tensor:
    """The cells where the teacher's features are strongest."""
    activation = teacher_feature.detach().float().abs().mean(dim=1).flatten(1)
    keep = max(1, int(fraction * activation.shape[1]))
    threshold = activation.topk(keep, dim=1).values[:, -1:]
    return (activation >= threshold).float().view(teacher_feature.shape[0], 1, *teacher_feature.shape[-2:])
