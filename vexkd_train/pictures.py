"""Pictures of what distillation does, on one val sample (BEV, forward up):
the generated masks per task and feature level, and student BEV features (as attention
maps) before and after distillation next to the teacher's."""
from __future__ import annotations

from pathlib import Path

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


def write_distillation_pictures(dataroot, version: str, teacher_path: Path, masks_path: Path,
                                students: dict[str, Path], out_dir: Path, nusc=None) -> list[Path]:
    """masks.png and features.png for the first val sample, written into `out_dir`."""
    from vexkd_core.checkpoint import model_from_checkpoint
    from vexkd_core.data.dataset import map_source_grid
    from vexkd_core.data.nuscenes_source import NuScenesSource
    from vexkd_core.data.preprocess import collate, preprocess
    from vexkd_core.io import atomic_write_bytes
    from vexkd_train.masks import load_masks

    teacher, config, _ = model_from_checkpoint(teacher_path, expected_modality="fusion")
    source = NuScenesSource(dataroot, version, "val", config.model.lidar.sweeps, map_source_grid(config, False),
                            nusc=nusc)
    batch = collate([preprocess(source.sample(0), config)[0]])
    models = {label: model_from_checkpoint(path)[0] for label, path in students.items()}
    generators = load_masks(masks_path, teacher)
    written = []
    for name, picture in (("masks.png", masks_picture(teacher, generators, batch)),
                          ("features.png", features_picture(teacher, models, batch))):
        written.append(atomic_write_bytes(out_dir / name, cv2.imencode(".png", picture)[1].tobytes()))
    return written
