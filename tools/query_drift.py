"""How far a teacher's MGFM query moved from its initialisation, and how alike the masks of
its fusion-query and random-query generators are. If the query has barely moved, the two
generators see nearly the same inputs and the mask-choice ablation cannot tell them apart.

The initialisation is rebuilt as `vexkd-train teacher` builds it (initial_model). Per
teacher: mean per-cell cosine of the query to its init, |q - q0| / |q0|, and the query's std;
with --masks, the agreement (Dice) of the two generators' decided masks on val. The
measurements are vexkd_train/distill_diagnostics.py and vexkd_train/masks.py.

    python tools/query_drift.py --teacher runs/query45/teacher/model.pt \\
        --masks runs/query45/masks_fusion/masks.pt runs/query45/masks_random/masks.pt --dataroot demo/world
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.data.dataset import model_source
from vexkd_train.distill_diagnostics import query_drift
from vexkd_train.mask_reports import measure_agreement
from vexkd_train.masks import load_masks

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--masks", type=Path, nargs=2, metavar=("FUSION_QUERY", "RANDOM_QUERY"))
    parser.add_argument("--dataroot", type=Path, default=REPO / "demo" / "world")
    parser.add_argument("--version", default="v1.0-trainval")
    args = parser.parse_args()
    for path in [args.teacher, *(args.masks or [])]:
        if not path.is_file():
            parser.error(f"no such file: {path}")
    teacher = model_from_checkpoint(args.teacher, expected_modality="fusion")[0].eval().requires_grad_(False)
    report = {"query": query_drift(teacher)}
    if args.masks:
        fusion, random = (load_masks(path, teacher) for path in args.masks)
        source = model_source(args.dataroot, args.version, "val", teacher.config, False)
        report["agreement"] = measure_agreement(teacher, fusion, random, source)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
