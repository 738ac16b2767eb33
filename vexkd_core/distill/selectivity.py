"""How selective generated masks are: the numbers that tell masked distillation from
whole-map distillation.

Per mask, over a split:
- `above_half`: share of BEV cells where the mask exceeds 0.5 (0 or 1 for a uniform mask);
- `variation`: spatial coefficient of variation, std / mean over the map (0 when uniform;
  attention transfer normalises after masking, so a uniform mask of any value is the
  whole map);
- `object_ratio` (detection): mean mask value on cells covered by a ground-truth box over
  the mean elsewhere (1 for a mask that ignores objects);
- `map_ratio` (segmentation): mean mask value on cells of any map class over the mean
  elsewhere, and `map_share`: the share of the mask's mass on map-class cells.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vexkd_core.structures import BEVGrid, Boxes3D


def box_footprints(boxes: Boxes3D, grid: BEVGrid) -> np.ndarray:
    """(H, W) bool: cells whose centre lies inside the footprint of any box."""
    xs, ys = grid.cell_centers()
    covered = np.zeros(xs.shape, bool)
    for center, size, yaw in zip(boxes.center, boxes.size_lwh, boxes.yaw):
        dx, dy = xs - center[0], ys - center[1]
        along = np.cos(yaw) * dx + np.sin(yaw) * dy
        across = -np.sin(yaw) * dx + np.cos(yaw) * dy
        # Half a cell of slack so boxes narrower than a cell still cover the cell they sit in.
        covered |= (np.abs(along) <= size[0] / 2 + grid.resolution / 2) & \
            (np.abs(across) <= size[1] / 2 + grid.resolution / 2)
    return covered


@dataclass
class MaskStatistics:
    above_half: float
    mean: float
    variation: float
    object_ratio: float | None = None
    map_ratio: float | None = None
    map_share: float | None = None


def _ratio(inside: float, outside: float) -> float:
    return inside / max(outside, 1e-9)


class SelectivityMeter:
    """Accumulates, per mask of one generator, the statistics above over many samples."""

    def __init__(self, task: str):
        self.task = task
        self.rows: list[dict[str, list[float]]] = []

    def add(self, masks: torch.Tensor, region: np.ndarray | None) -> None:
        """masks (T, H, W) of one sample; region (H, W) bool: GT-box cells (detection) or
        map-class cells (segmentation) at the masks' resolution (None: not known)."""
        masks = masks.detach().float().cpu().numpy()
        if not self.rows:
            self.rows = [{} for _ in range(len(masks))]
        for mask, row in zip(masks, self.rows):
            mean = float(mask.mean())
            values = {"above_half": float((mask > 0.5).mean()), "mean": mean,
                      "variation": float(mask.std() / max(mean, 1e-9))}
            if region is not None and region.any() and not region.all():
                inside, outside = float(mask[region].mean()), float(mask[~region].mean())
                if self.task == "detection":
                    values["object_ratio"] = _ratio(inside, outside)
                else:
                    values["map_ratio"] = _ratio(inside, outside)
                    values["map_share"] = float(mask[region].sum() / max(mask.sum(), 1e-9))
            for name, value in values.items():
                row.setdefault(name, []).append(value)

    def summary(self) -> list[MaskStatistics]:
        return [MaskStatistics(**{name: float(np.mean(values)) for name, values in row.items()}) for row in self.rows]


def selectivity_table(report: dict[str, list[dict]]) -> str:
    """Markdown table of a selectivity report: generator key -> per-mask statistics."""
    lines = ["| generator | mask | cells > 0.5 | mean | spatial CV | on GT boxes / elsewhere | on map / elsewhere |",
             "|---|---|---|---|---|---|---|"]
    for key, masks in report.items():
        for index, stats in enumerate(masks):
            ratio = lambda name: f"{stats[name]:.2f}" if stats.get(name) is not None else "-"  # noqa: E731
            lines.append(f"| {key} | {index} | {stats['above_half']:.1%} | {stats['mean']:.3f} | "
                         f"{stats['variation']:.2f} | {ratio('object_ratio')} | {ratio('map_ratio')} |")
    return "\n".join(lines)


def as_report(meters: dict[str, SelectivityMeter]) -> dict[str, list[dict]]:
    return {key: [asdict(stats) for stats in meter.summary()] for key, meter in meters.items()}
