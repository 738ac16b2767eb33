"""Pictures of what distillation does, on one val sample (BEV, forward up):
the generated masks per task and feature level, and student BEV features (as attention
maps) before and after distillation next to the teacher's, each picture with its colour bar;
and the experiment's missing-sensor figure: each teacher with both sensors and with one."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from vexkd_core.distill.losses import attention_map

PANEL = 200  # pixels per BEV panel


def _panel(values: np.ndarray, title: str, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A [y, x] map as a coloured, labelled square with forward up and left to the left;
    coloured over `value_range`, or stretched to the map's own min..max when None."""
    low, high = value_range if value_range is not None else (values.min(), values.max())
    span = high - low
    scaled = (np.clip((values - low) / (span if span > 0 else 1.0), 0, 1) * 255).astype(np.uint8)
    image = cv2.applyColorMap(np.ascontiguousarray(np.rot90(scaled)[:, ::-1]), cv2.COLORMAP_VIRIDIS)
    image = cv2.resize(image, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)
    cv2.putText(image, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _colour_bar(low: float, high: float, height: int) -> np.ndarray:
    """A vertical bar of the panels' colour scale, `high` at the top."""
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(24, axis=1)
    bar = np.zeros((height, 80, 3), np.uint8)
    bar[:, 4:28] = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)
    for value, y in ((high, 12), ((low + high) / 2, height // 2 + 4), (low, height - 4)):
        cv2.putText(bar, f"{value:.2g}", (30, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    width = max(len(row) for row in rows)
    blank = np.zeros((PANEL, PANEL, 3), np.uint8)
    return np.vstack([np.hstack(row + [blank] * (width - len(row))) for row in rows])


@torch.no_grad()
def masks_picture(teacher, generators: dict, batch) -> np.ndarray:
    """One row per generator (task/level), one panel per mask, all on one 0..1 colour scale
    (a per-panel stretch would make a uniform mask look selective); each title gives the
    mask's share of cells above 0.5."""
    output = teacher(batch)
    rows = []
    for key, generator in generators.items():
        masks = generator(getattr(output, key.split("/")[1]), output.fused)[0].cpu().numpy()
        rows.append([_panel(mask, f"{key} {t + 1}: {(mask > 0.5).mean():.1%}", (0.0, 1.0))
                     for t, mask in enumerate(masks)])
    grid = _grid(rows)
    return np.hstack([grid, _colour_bar(0.0, 1.0, grid.shape[0])])


@torch.no_grad()
def features_picture(teacher, students: dict[str, torch.nn.Module], batch) -> np.ndarray:
    """Attention maps (channel mean of squared features) at both levels: teacher, then each
    student. Each is L2-normalised over the map, so one colour scale per level (0 to the row's
    largest value, its bar on the right) compares the models where a stretch each would not."""
    outputs = {name: model(batch) for name, model in {"teacher": teacher, **students}.items()}
    rows = []
    for level in ("low", "high"):
        maps = {}
        for name, output in outputs.items():
            feature = getattr(output, level)
            maps[name] = attention_map(feature)[0].view(feature.shape[-2:]).cpu().numpy()
        high = float(max(values.max() for values in maps.values()))
        panels = [_panel(values, f"{name} {level}", (0.0, high)) for name, values in maps.items()]
        rows.append(np.hstack(panels + [_colour_bar(0.0, high, PANEL)]))
    return np.vstack(rows)


def _first_val_batch(teacher_path: Path, dataroot, version: str, nusc=None):
    """(teacher, the first val sample as a batch of one)."""
    from vexkd_core.checkpoint import model_from_checkpoint
    from vexkd_core.data.dataset import model_source
    from vexkd_core.data.preprocess import collate, preprocess

    teacher, config, _ = model_from_checkpoint(teacher_path, expected_modality="fusion")
    source = model_source(dataroot, version, "val", config, False, nusc=nusc)
    return teacher, collate([preprocess(source.sample(0), config)[0]])


def _write_png(path: Path, picture: np.ndarray) -> Path:
    from vexkd_core.io import atomic_write_bytes

    return atomic_write_bytes(path, cv2.imencode(".png", picture)[1].tobytes())


def write_distillation_pictures(dataroot, version: str, teacher_path: Path, masks_path: Path,
                                students: dict[str, Path], out_dir: Path, nusc=None) -> list[Path]:
    """masks.png and features.png for the first val sample, written into `out_dir`."""
    from vexkd_core.checkpoint import model_from_checkpoint
    from vexkd_train.masks import load_masks

    teacher, batch = _first_val_batch(teacher_path, dataroot, version, nusc)
    models = {label: model_from_checkpoint(path)[0] for label, path in students.items()}
    generators = load_masks(masks_path, teacher)
    return [_write_png(out_dir / "masks.png", masks_picture(teacher, generators, batch)),
            _write_png(out_dir / "features.png", features_picture(teacher, models, batch))]


def write_masks_pictures(dataroot, version: str, teacher_path: Path, masks: dict[str, Path], out_dir: Path,
                         nusc=None) -> list[Path]:
    """masks_<name>.png per generator set of `masks` (name -> masks.pt) for the first val sample."""
    from vexkd_train.masks import load_masks

    teacher, batch = _first_val_batch(teacher_path, dataroot, version, nusc)
    return [_write_png(out_dir / f"masks_{name}.png", masks_picture(teacher, load_masks(path, teacher), batch))
            for name, path in masks.items()]


def gains_picture(tables: dict[str, dict], world: str) -> bytes:
    """PNG of the study's gains on `world`: per table and metric, each row's mean gain over no
    FD with its 95 % interval (bars) and its minimum detectable difference (grey band, +-):
    an interval inside the band is an experiment too small to see that row's effect."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from vexkd_train.study_report import METRICS, gains

    panels = [(table, metric) for table, rows in tables.items() for metric in METRICS
              if any(metric in found for found in gains(rows).values())]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), constrained_layout=True,
                                   squeeze=False)
    for axis, (table, metric) in zip(axes[0], panels):
        found = {label: entry[metric] for label, entry in gains(tables[table]).items() if metric in entry}
        labels = list(found)[::-1]
        means = np.array([found[label]["mean"] for label in labels])
        lows = np.array([found[label]["low"] for label in labels])
        highs = np.array([found[label]["high"] for label in labels])
        known = [found[label]["detectable"] for label in labels if np.isfinite(found[label]["detectable"])]
        title = f"{table}: {metric} gain, {world}"
        if known:  # one seed has no spread to size it by
            detectable = float(np.median(known))
            axis.axvspan(-detectable, detectable, color="0.88")
            title += f"\ngrey: +-median MDD {detectable:.3f}"  # a legend would hide a row's point
        error = None if np.isnan(lows).all() else np.vstack([means - lows, highs - means])
        axis.errorbar(means, np.arange(len(labels)), xerr=error, fmt="o", capsize=3, color="tab:blue")
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(np.arange(len(labels)), labels, fontsize=8)
        axis.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()


def robustness_picture(robustness: dict[str, dict[str, dict]]) -> bytes:
    """PNG of the experiment's robustness table (teacher -> sensor case -> summary): mAP and
    mIoU bars per sensor case, one bar per teacher, each with its value (a teacher is one run)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    teachers = list(robustness)
    cases = list(next(iter(robustness.values())))
    figure, axes = pyplot.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    width = 0.8 / len(teachers)
    for axis, metric in zip(axes, ("mAP", "mIoU")):
        for k, teacher in enumerate(teachers):
            positions = np.arange(len(cases)) + (k - (len(teachers) - 1) / 2) * width
            bars = axis.bar(positions, [robustness[teacher][case][metric]["mean"] for case in cases], width,
                            label=teacher)
            axis.bar_label(bars, fmt="%.3f", fontsize=8)
        axis.set_xticks(np.arange(len(cases)), cases)
        axis.set_title(f"teacher {metric} on val")
        axis.set_ylim(0, max(0.05, axis.get_ylim()[1] * 1.15))
    axes[0].legend(title="fuser")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()
