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
  elsewhere, and `map_share`: the share of the mask's mass on map-class cells;
- `soft_dice`, `region_dice`: its Dice with every mask of the generator (itself included),
  of the soft masks and of their > 0.5 regions, per sample and averaged.

Per generator (`diversity`): the mean over pairs of both Dice figures, and how many masks are
distinct: selective (above 0.5 on 1-99 % of cells) and with region Dice below 0.5 against
every distinct mask before them. Soft Dice alone would call two uniform masks of 0.25 and
0.02 different (0.16); their > 0.5 regions are both empty, which counts as the same region.
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
    soft_dice: list[float] | None = None
    region_dice: list[float] | None = None


def _ratio(inside: float, outside: float) -> float:
    return inside / max(outside, 1e-9)


def dice_matrix(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T, T) Dice of every pair; two empty masks count as equal (1)."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    intersection = flat @ flat.T
    energy = np.diag(intersection)
    denominator = energy[:, None] + energy[None, :]
    return np.where(denominator > 0, 2 * intersection / np.maximum(denominator, 1e-12), 1.0)


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
        for name, matrix in (("soft_dice", dice_matrix(masks)), ("region_dice", dice_matrix(masks > 0.5))):
            for row, dice in zip(self.rows, matrix):
                row.setdefault(name, []).append(dice)

    def summary(self) -> list[MaskStatistics]:
        return [MaskStatistics(**{name: np.mean(values, axis=0).tolist() for name, values in row.items()})
                for row in self.rows]


@dataclass
class Diversity:
    soft_dice: float  # mean over pairs; 0 for T = 1
    region_dice: float
    distinct: int


def generator_diversity(masks: list[dict]) -> Diversity:
    """The per-generator figures above, from one generator's rows of a report."""
    soft, region = np.array([m["soft_dice"] for m in masks]), np.array([m["region_dice"] for m in masks])
    pairs = np.triu_indices(len(masks), 1)
    distinct: list[int] = []
    for index, stats in enumerate(masks):
        if 0.01 <= stats["above_half"] <= 0.99 and all(region[index, kept] < 0.5 for kept in distinct):
            distinct.append(index)
    mean = lambda matrix: float(matrix[pairs].mean()) if len(masks) > 1 else 0.0  # noqa: E731
    return Diversity(mean(soft), mean(region), len(distinct))


def selectivity_table(report: dict[str, list[dict]]) -> str:
    """Markdown table of a selectivity report: generator key -> per-mask statistics."""
    lines = ["| generator | mask | cells > 0.5 | mean | spatial CV | on GT boxes / elsewhere | on map / elsewhere |",
             "|---|---|---|---|---|---|---|"]
    for key, masks in report.items():
        for index, stats in enumerate(masks):
            ratio = lambda name: _ratio_cell(stats.get(name))  # noqa: E731
            lines.append(f"| {key} | {index} | {stats['above_half']:.1%} | {stats['mean']:.3f} | "
                         f"{stats['variation']:.2f} | {ratio('object_ratio')} | {ratio('map_ratio')} |")
    lines += ["", "| generator | masks | distinct | mean pairwise soft Dice | mean pairwise Dice of > 0.5 regions |",
              "|---|---|---|---|---|"]
    for key, masks in report.items():
        diversity = generator_diversity(masks)
        lines.append(f"| {key} | {len(masks)} | {diversity.distinct} | {diversity.soft_dice:.2f} | "
                     f"{diversity.region_dice:.2f} |")
    return "\n".join(lines)


class AgreementMeter:
    """How alike two generators' masks are on the same samples (the fusion-query and the
    random-query ablation), whatever order each put its masks in:
    - `union_dice`: Dice of the cells any mask of one takes with those of the other;
    - `best_dice`: per mask of the first, its best Dice with a mask of the second, averaged.
    1 and 1 would make the ablation a comparison of one set of masks with itself."""

    def __init__(self):
        self.union: list[float] = []
        self.best: list[float] = []

    def add(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """first, second: (T, H, W) masks of one sample."""
        first, second = (masks.detach().float().cpu().numpy() > 0.5 for masks in (first, second))
        union = dice_matrix(np.stack([first.any(0), second.any(0)]))
        self.union.append(float(union[0, 1]))
        both = dice_matrix(np.concatenate([first, second]))
        self.best.append(float(both[:len(first), len(first):].max(axis=1).mean()))

    def summary(self) -> dict[str, float]:
        return {"union_dice": float(np.mean(self.union)), "best_dice": float(np.mean(self.best))}


def agreement_table(agreement: dict[str, dict[str, float]]) -> str:
    lines = ["| generator | Dice of the cells any mask takes | best Dice per mask (mean) |", "|---|---|---|"]
    lines += [f"| {key} | {values['union_dice']:.2f} | {values['best_dice']:.2f} |" for key, values in agreement.items()]
    return "\n".join(lines)


def _ratio_cell(ratio: float | None) -> str:
    """A ratio of means for the table; past 1000 the mask is (next to) nowhere else, and the
    digits would only say how close to nowhere."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if ratio < 1000 else "> 1000"


def as_report(meters: dict[str, SelectivityMeter]) -> dict[str, list[dict]]:
    return {key: [asdict(stats) for stats in meter.summary()] for key, meter in meters.items()}
