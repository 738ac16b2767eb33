"""What distillation has to work with, measured: the attention maps a student is matched
against, and how far the teacher's MGFM query (which the mask generators copy) moved from
its initialisation. The command lines are tools/distill_diagnosis.py and tools/query_drift.py.

Attention transfer compares L2-normalised attention maps (channel mean of squared
features). Per level, `diagnose` reports for the teacher: its maps' spatial coefficient of
variation (std / mean), their correlation with LiDAR occupancy (cells with a point) and with
the same teacher's maps when it sees one sensor only; and for each student: its maps'
variation, their correlation with the teacher's and with LiDAR occupancy, and the AT distance
to the teacher's (the unmasked distillation loss). Means over the split's samples.

`query_drift` rebuilds the query's initialisation as `vexkd-train teacher` builds it
(initial_model) and reports the mean per-cell cosine of the query to it, |q - q0| / |q0| and
the query's std. If the query has barely moved, the fusion-query and random-query generators
see nearly the same inputs and the mask-choice ablation cannot tell them apart.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.data.sample import without_sensor
from vexkd_core.distill.losses import attention_map
from vexkd_core.models.lidar_encoder import pillar_inputs
from vexkd_core.models.vexkd import initial_model

LEVELS = ("low", "high")


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def occupancy(batch, grid) -> torch.Tensor:
    """(H * W,) 1 where a LiDAR point falls, the map AT flattens to."""
    cells = torch.zeros(grid.height * grid.width)
    cells[pillar_inputs(batch.points, grid, 1).cell] = 1.0
    return cells


def loss_terms(log: Path) -> dict[str, dict[str, float]]:
    """A run's distillation and task loss terms (its log.csv), mean over its first and last 20 steps."""
    rows = list(csv.DictReader(log.open()))
    names = [name for name in rows[0] if name.startswith("distill") or name in ("heatmap", "box", "map", "depth")]
    return {part: {name: float(np.mean([float(row[name]) for row in chosen])) for name in names}
            for part, chosen in (("first 20 steps", rows[:20]), ("last 20 steps", rows[-20:]))}


@torch.no_grad()
def diagnose(teacher, students: dict, source) -> dict:
    """{level: {figure: mean over the source's samples}} for the teacher and each named student."""
    config, grid = teacher.config, teacher.config.grid.bev
    values: dict[str, dict[str, list[float]]] = {level: {} for level in LEVELS}

    def add(level: str, name: str, value: float) -> None:
        values[level].setdefault(name, []).append(value)

    for index in range(len(source)):
        sample = source.sample(index)
        batch = collate([preprocess(sample, config)[0]])
        occupied = occupancy(batch, grid)
        views = {"": teacher(batch)}
        views.update({sensor: teacher(collate([preprocess(without_sensor(sample, sensor), config)[0]]))
                      for sensor in ("lidar", "camera")})
        outputs = {name: model(batch) for name, model in students.items()}
        for level in LEVELS:
            target = attention_map(getattr(views[""], level))[0]
            add(level, "teacher: variation", float(target.std() / target.mean()))
            add(level, "teacher ~ LiDAR occupancy", correlation(target, occupied))
            add(level, "teacher ~ teacher without LiDAR",
                correlation(target, attention_map(getattr(views["lidar"], level))[0]))
            add(level, "teacher ~ teacher without cameras",
                correlation(target, attention_map(getattr(views["camera"], level))[0]))
            for name, output in outputs.items():
                mine = attention_map(getattr(output, level))[0]
                add(level, f"{name}: variation", float(mine.std() / mine.mean()))
                add(level, f"{name} ~ teacher", correlation(mine, target))
                add(level, f"{name} ~ LiDAR occupancy", correlation(mine, occupied))
                add(level, f"{name}: AT distance to the teacher", float((mine - target).pow(2).sum()))
    return {level: {name: float(np.mean(v)) for name, v in by_name.items()} for level, by_name in values.items()}


def query_drift(teacher) -> dict[str, float]:
    """How far the teacher's fuser query is from the initialisation `vexkd-train teacher` builds."""
    initial = initial_model(teacher.config, "fusion").fuser.bev_query.detach()
    query = teacher.fuser.bev_query.detach()
    return {"cosine_to_init": torch.nn.functional.cosine_similarity(query, initial, dim=1).mean().item(),
            "relative_change": ((query - initial).norm() / initial.norm()).item(), "std": query.std().item()}
