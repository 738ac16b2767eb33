"""What a distilled student's attention maps are matched against, over a whole split.

Attention transfer compares L2-normalised attention maps (channel mean of squared
features). Per level, this reports for the teacher: its maps' spatial coefficient of
variation (std / mean), their correlation with LiDAR occupancy (cells with a point) and
with the same teacher's maps when it sees one sensor only; and for each student: its maps'
variation, their correlation with the teacher's and with LiDAR occupancy, and the AT
distance to the teacher's (the unmasked distillation loss). Means over the split's samples.
Also each run's loss terms over its first and last 20 steps (its log.csv), if it has one.
The measurements are vexkd_train/distill_diagnostics.py.

    python tools/distill_diagnosis.py --dataroot demo/world --teacher demo/runs/teacher/model.pt \\
        --student camera=demo/runs/camera/model.pt --student camera+VeXKD=demo/runs/camera-vexkd/model.pt \\
        --out docs/distill_diagnosis.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.data.dataset import model_source
from vexkd_core.io import atomic_write_json
from vexkd_train.distill_diagnostics import diagnose, loss_terms


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
    source = model_source(args.dataroot, args.version, args.split, config, False)
    figures = diagnose(teacher, students, source)
    logs = {name: loss_terms(Path(path).parent / "log.csv") for name, path in paths.items()
            if (Path(path).parent / "log.csv").is_file()}
    for level, by_name in figures.items():
        print(f"{level} level")
        for name, value in by_name.items():
            print(f"  {name:48s} {value:7.3f}")
    for name, parts in logs.items():
        for part, terms in parts.items():
            print(f"{name} {part}: " + ", ".join(f"{k} {v:.3f}" for k, v in terms.items()))
    atomic_write_json(args.out, {"split": args.split, "samples": len(source), "levels": figures, "loss_terms": logs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
