"""results.md of `vexkd-train experiment`: the tables, from results.json's summaries.

A row's gain is over the row its summary names as `baseline` (summarised finds
it from the students, not from labels), paired seed by seed.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.distill.selectivity import agreement_table, selectivity_table
from vexkd_train.study_report import study_sections

if TYPE_CHECKING:
    from vexkd_train.experiment_plan import Student

TITLES = {"comparison": "Teacher and students", "components": "Components (LiDAR student)",
          "masks": "Mask choice (LiDAR student)", "blocks": "Mask-generator blocks (LiDAR student)",
          "distance": "Distillation distance (LiDAR student)",
          "fusers": "Teacher fusion: MGFM against BEVFusion's ConvFuser",
          "camera": "Camera student: depth supervision and VeXKD",
          "study-lidar": "Mask study: LiDAR student, a model per task",
          "study-camera": "Mask study: camera student, detection",
          "study-map-teacher": "Mask study: LiDAR map student from a map-only teacher"}


def spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def summarised(rows: list[tuple[str, Student]], metrics_of) -> dict[str, dict]:
    """Row label -> summary over the row's seeds, with `metrics_of(student)` giving one run's
    metrics, and `baseline`: the label of the table's row that holds the student's baseline
    (None for a baseline, or where the table has none). A row of per-task students takes each
    seed's detection metrics from its detection student and map metrics from its map student."""
    grouped: dict[str, dict[int, list[dict]]] = {}
    labels = {replace(student, seed=0): label for label, student in rows}
    baselines = {}
    for label, student in rows:
        grouped.setdefault(label, {}).setdefault(student.seed, []).append(metrics_of(student))
        baseline = labels.get(replace(student.baseline, seed=0))
        baselines[label] = baseline if baseline != label else None
    return {label: {**summarise([merged(runs) for runs in by_seed.values()]), "baseline": baselines[label]}
            for label, by_seed in grouped.items()}


def merged(runs: list[dict]) -> dict:
    """One seed's metrics of a row from its students' runs: detection from the run that has it,
    the map from the run that has it (the same run for a multi-task student)."""
    detection = next((run for run in runs if run.get("detection")), runs[0])
    segmentation = next((run for run in runs if run.get("map")), runs[0])
    return {**detection, "map": segmentation.get("map")}


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (population std) over seeds of mAP, NDS, mIoU, with the per-seed values
    (in seed order, so gains can be paired seed by seed); latency and size. A metric of a task
    the runs were not trained for is None."""
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": spread(values), "values": values}

    def metric(task: str, key: str) -> dict | None:
        return None if any(not run.get(task) for run in runs) else stats([run[task][key] for run in runs])

    detected, mapped = all(run.get("detection") for run in runs), all(run.get("map") for run in runs)
    return {"mAP": metric("detection", "mAP"), "NDS": metric("detection", "NDS"), "mIoU": metric("map", "mIoU"),
            "seeds": len(runs),
            "per_class_ap": {name: stats([r["detection"]["per_class_ap"][name] for r in runs])
                             for name in DETECTION_CLASSES} if detected else {},
            "per_class_iou": {name: stats([r["map"]["iou"][name] for r in runs])
                              for name in runs[0]["map"].get("iou", {})} if mapped else {},
            "latency_ms": statistics.fmean(r["latency_ms"]["total"] for r in runs),
            "step_seconds": statistics.fmean(r.get("step_seconds", math.nan) for r in runs),
            "parameters": runs[0]["parameters"]}


SPREAD_NOTE = ("Mean +- spread (population std) over a table's seeds; a gain is the mean +- spread of the "
               "seed-by-seed difference from its baseline.")
# Measured once on the paper suite (docs/results.md, "How much the figures move").
ONE_SEED_NOTE = ("These figures are **one seed**. Across three seeds of the paper suite a student's mAP moves by "
                 "0.01-0.025 (standard deviation) and a distillation gain by up to 0.04, and training is not "
                 "bit-for-bit the same on another CPU (floating-point order): read differences under about 0.04 "
                 "mAP as noise (docs/results.md, \"How much the figures move\").")


def markdown(results: dict) -> str:
    """results.md: the title, then `sections`."""
    return "\n".join(["# VeXKD experiment", "", *sections(results)])


def sections(results: dict) -> list[str]:
    """Every table of `results` as markdown lines; the demo's report holds them too."""
    teacher = results["teacher"]
    summary = (f"Teacher: {teacher_figures(teacher)}, {teacher['latency_ms']:.0f} ms, "
               f"{teacher['parameters'] / 1e6:.2f} M parameters.{other_teachers(results)}")
    lines = []
    if "comparison" in results["tables"]:  # the pictures are of the comparison's students
        lines += ["![Generated masks per task and level (first val sample)](masks.png)", "",
                  "![Attention maps of the BEV features: teacher, students before and after VeXKD](features.png)", ""]
    seeds = max(entry["seeds"] for rows in results["tables"].values() for entry in rows.values())
    lines += [summary, "", SPREAD_NOTE if seeds > 1 else ONE_SEED_NOTE, ""]
    for table, rows in results["tables"].items():
        lines += _metric_table(f"## {TITLES[table]}", rows)
    lines += _robustness_table(results.get("robustness", {}))
    for label, report in results.get("selectivity", {}).items():
        lines += [f"## Mask selectivity on val: generators from the {label}", "",
                  "Per mask, how selective it is on the val split (a uniform mask, of any value, would be "
                  "whole-map distillation):", "", selectivity_table(report), ""]
    if "mask_agreement" in results:
        lines += ["## Fusion-query against random-query masks on val", "",
                  "Each generator's decided masks against those of its random-query ablation, per sample and "
                  "averaged: near 1, the two rows of the mask-choice table distil with the same masks.", "",
                  agreement_table(results["mask_agreement"]), ""]
    validation = {"teacher": teacher, **_per_class_rows(results["tables"])}
    if "training_split" in results:
        lines += _training_split_table(results["training_split"], validation)
    lines += _per_class_table(validation, results["val_objects"])
    lines += _per_class_iou_table(validation)
    if "heldout" in results:
        held, held_teacher = results["heldout"], results["heldout"]["teacher"]
        introduction = (f"The same checkpoints, evaluated on a second world. Teacher: {teacher_figures(held_teacher)}."
                        f"{other_teachers(held)}")
        lines += [f"# Held-out world: val split of {held['dataroot']}", "", introduction, ""]
        for table, rows in held["tables"].items():
            lines += _metric_table(f"## {TITLES[table]}, held-out world", rows)
        lines += _per_class_table({"teacher": held["teacher"], **_per_class_rows(held["tables"])},
                                  held["val_objects"])
    if "test" in results:
        test = results["test"]
        lines += [f"Teachers on the test world: teacher: {teacher_figures(test['teacher'])}.{other_teachers(test)}", ""]
    return lines + study_sections(results)


def teacher_figures(entry: dict) -> str:
    """A teacher's mAP, NDS and mIoU (of the tasks it has)."""
    return ", ".join(f"{metric} {entry[metric]['mean']:.4f}" for metric in ("mAP", "NDS", "mIoU")
                     if entry[metric] is not None)


def other_teachers(results: dict) -> str:
    """The teachers other than the default one that the tables distil from, by run name (a
    LiDAR-only control, one from another seed, one of a task alone)."""
    return "".join(f" {name}: {teacher_figures(entry)}." for name, entry in results.get("other_teachers", {}).items())


def _per_class_rows(tables: dict) -> dict:
    """The rows whose per-class AP is shown: the comparison's and the camera table's."""
    return {**tables.get("comparison", {}), **tables.get("camera", {})}


def _metric_table(title: str, rows: dict) -> list[str]:
    seeds = max(entry["seeds"] for entry in rows.values())
    lines = [f"{title} ({seeds} seed{'s' if seeds > 1 else ''})", "",
             "| row | mAP (gain) | NDS (gain) | mIoU (gain) | latency ms | parameters | train s/step |",
             "|---|---|---|---|---|---|---|"]
    for label, entry in rows.items():
        base = rows[entry["baseline"]] if entry.get("baseline") else None
        lines.append(f"| {label} | {_cell(entry, 'mAP', base)} | {_cell(entry, 'NDS', base)} | "
                     f"{_cell(entry, 'mIoU', base)} | {entry['latency_ms']:.0f} | {entry['parameters'] / 1e6:.2f} M | "
                     f"{entry.get('step_seconds', math.nan):.2f} |")
    return lines + [""]


def _cell(entry: dict, key: str, base: dict | None) -> str:
    if entry[key] is None:
        return "-"
    several = entry["seeds"] > 1
    text = f"{entry[key]['mean']:.4f}" + (f" +- {entry[key]['std']:.4f}" if several else "")
    if not base:
        return text
    # Same seed, same data order: the gain's spread is that of the seed-by-seed differences.
    gains = [value - reference for value, reference in zip(entry[key]["values"], base[key]["values"])]
    return text + f" ({statistics.fmean(gains):+.4f}" + (f" +- {spread(gains):.4f})" if several else ")")


def _robustness_table(robustness: dict) -> list[str]:
    if not robustness:
        return []
    lines = ["## Each teacher with a sensor missing (val)", "",
             "![Each teacher with a sensor missing](robustness.png)", "",
             "| teacher | sensors | mAP | NDS | mIoU |", "|---|---|---|---|---|"]
    for fuser, cases in robustness.items():
        lines += [f"| {fuser} | {case} | {entry['mAP']['mean']:.4f} | {entry['NDS']['mean']:.4f} | "
                  f"{entry['mIoU']['mean']:.4f} |" for case, entry in cases.items()]
    return lines + [""]


def _training_split_table(fitted: dict, validation: dict) -> list[str]:
    lines = ["## Training split against val (generalisation check)", "",
             "| row | mAP train / val | NDS train / val | mIoU train / val |", "|---|---|---|---|"]
    for label, entry in fitted.items():
        lines.append(f"| {label} | " + " | ".join(f"{entry[key]['mean']:.4f} / {validation[label][key]['mean']:.4f}"
                                                  for key in ("mAP", "NDS", "mIoU")) + " |")
    return lines + [""]


def _per_class_table(validation: dict, val_objects: dict[str, int]) -> list[str]:
    lines = ["## Per-class AP on val (mean over seeds)", "",
             "mAP averages these ten; a class resting on a handful of val objects swings it on its own.", "",
             "| row | " + " | ".join(DETECTION_CLASSES) + " |", "|---" * (len(DETECTION_CLASSES) + 1) + "|",
             "| val objects | " + " | ".join(str(val_objects[name]) for name in DETECTION_CLASSES) + " |"]
    for label, entry in validation.items():
        lines.append(f"| {label} | " + " | ".join(f"{entry['per_class_ap'][name]['mean']:.2f}"
                                                  for name in DETECTION_CLASSES) + " |")
    return lines + [""]


def _per_class_iou_table(validation: dict) -> list[str]:
    classes = next(iter(validation.values())).get("per_class_iou", {})
    if not classes:
        return []
    lines = ["## Map IoU per class on val (mean over seeds)", "", "| row | " + " | ".join(classes) + " |",
             "|---" * (len(classes) + 1) + "|"]
    for label, entry in validation.items():
        lines.append(f"| {label} | " + " | ".join(f"{entry['per_class_iou'][name]['mean']:.3f}" for name in classes)
                     + " |")
    return lines + [""]
