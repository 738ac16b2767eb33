"""Pictures of what distillation does, on one val sample (BEV, forward up):
the generated masks per task and feature level, and student BEV features (as attention
maps) before and after distillation next to the teacher's."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from vexkd_core.distill.losses import attention_map

PANEL = 200  # pixels per BEV panel


def _panel(values: np.ndarray, title: str) -> np.ndarray:
    """A [y, x] map as a coloured, labelled square with forward up and left to the left."""
    span = values.max() - values.min()
    scaled = ((values - values.min()) / (span if span > 0 else 1.0) * 255).astype(np.uint8)
    image = cv2.applyColorMap(np.ascontiguousarray(np.rot90(scaled)[:, ::-1]), cv2.COLORMAP_VIRIDIS)
    image = cv2.resize(image, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)
    cv2.putText(image, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    width = max(len(row) for row in rows)
    blank = np.zeros((PANEL, PANEL, 3), np.uint8)
    return np.vstack([np.hstack(row + [blank] * (width - len(row))) for row in rows])


@torch.no_grad()
def masks_picture(teacher, generators: dict, batch) -> np.ndarray:
    """One row per generator (task/level), one panel per mask."""
    output = teacher(batch)
    rows = []
    for key, generator in generators.items():
        feature = output.low if key.endswith("low") else output.high
        masks = generator(feature)[0].cpu().numpy()
        rows.append([_panel(mask, f"{key} mask {t + 1}") for t, mask in enumerate(masks)])
    return _grid(rows)


@torch.no_grad()
def features_picture(teacher, students: dict[str, torch.nn.Module], batch) -> np.ndarray:
    """Attention maps (channel mean of squared features) at both levels: teacher, then each student."""
    rows = []
    for level in ("low", "high"):
        row = []
        for name, model in {"teacher": teacher, **students}.items():
            feature = getattr(model(batch), level)
            shape = feature.shape[-2:]
            row.append(_panel(attention_map(feature)[0].view(shape).cpu().numpy(), f"{name} {level}"))
        rows.append(row)
    return _grid(rows)
