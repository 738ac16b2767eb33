"""What a distilled student's attention maps are matched against, over a whole split.

Attention transfer compares L2-normalised attention maps (channel mean of squared
features). Per level, this reports for the teacher: its maps' spatial coefficient of
variation (std / mean), their correlation with LiDAR occupancy (cells with a point) and
with the same teacher's maps when it sees one sensor only; and for each student: its maps'
variation, their correlation with the teacher's and with LiDAR occupancy, and the AT
distance to the teacher's (the unmasked distillation loss). Means over the split's samples.
Also each run's loss terms over its first and last 20 steps (its log.csv), if it has one.

    python tools/distill_diagnosis.py --dataroot demo/world --teacher demo/runs/teacher/model.pt \\
        --student camera=demo/runs/camera/model.pt --student camera+VeXKD=demo/runs/camera-vexkd/model.pt \\
        --out docs/distill_diagnosis.json
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vexkd_core.checkpoint import model_from_checkpoint  # noqa: E402
from vexkd_core.data.dataset import model_source  # noqa: E402
from vexkd_core.data.preprocess import collate, preprocess  # noqa: E402
from vexkd_core.data.sample import without_sensor  # noqa: E402
from vexkd_core.distill.losses import attention_map  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.models.lidar_encoder import pillar_inputs  # noqa: E402

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
    rows = list(csv.DictReader(log.open()))
    names = [name for name in rows[0] if name.startswith("distill") or name in ("heatmap", "box", "map", "depth")]
    return {part: {name: float(np.mean([float(row[name]) for row in chosen])) for name in names}
            for part, chosen in (("first 20 steps", rows[:20]), ("last 20 steps", rows[-20:]))}


@torch.no_grad()
def diagnose(teacher, students: dict, source) -> dict:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="val")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--out", type=Path, required=True, help="JSON of the figures")
    args = parser.parse_args()
    teacher, config, _ = model_from_checkpoint(args.teacher, expected_modality="fusion")
    paths = dict(entry.split("=", 1) for entry in args.student)
    students = {name: model_from_checkpoint(path)[0] for name, path in paths.items()}
    figures = diagnose(teacher, students, model_source(args.dataroot, args.version, args.split, config, False))
    logs = {name: loss_terms(Path(path).parent / "log.csv") for name, path in paths.items()
            if (Path(path).parent / "log.csv").is_file()}
    for level, by_name in figures.items():
        print(f"{level} level")
        for name, value in by_name.items():
            print(f"  {name:48s} {value:7.3f}")
    for name, parts in logs.items():
        for part, terms in parts.items():
            print(f"{name} {part}: " + ", ".join(f"{k} {v:.3f}" for k, v in terms.items()))
    atomic_write_json(args.out, {"split": args.split, "samples": len(model_source(
        args.dataroot, args.version, args.split, config, False)), "levels": figures, "loss_terms": logs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
