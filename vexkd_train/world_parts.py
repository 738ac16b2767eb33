"""Evaluation noise measured inside one world: its val split cut into PARTS parts of whole
scenes, and a checkpoint scored on each part from what its evaluation of the whole split kept
(the devkit on its results.json restricted to the part's samples; the map from its per-sample
counts), without running the model again.

A gain that moves between 64-sample parts of one world with the checkpoints fixed moves by
evaluation alone; set against how much it moves between training seeds on the whole split,
that says how much of the seed spread is evaluation noise (study_report's noise tables).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_train.evaluate import MAP_COUNTS, devkit_summary, map_summary

PARTS = 8


def scene_parts(nusc, sample_tokens: list[str], parts: int = PARTS) -> list[list[str]]:
    """The samples in `parts` groups of whole scenes (scenes in name order, cut as evenly as
    their number allows): samples of one scene are alike, so a part never splits one."""
    by_scene: dict[str, list[str]] = defaultdict(list)
    for token in sample_tokens:
        by_scene[nusc.get("scene", nusc.get("sample", token)["scene_token"])["name"]].append(token)
    names = sorted(by_scene)
    if len(names) < parts:
        raise ValueError(f"{len(names)} val scenes cannot be cut into {parts} parts of whole scenes")
    return [[token for name in chunk for token in by_scene[name]] for chunk in np.array_split(names, parts)]


def part_metrics(eval_dir: Path, nusc, split: str, parts: int = PARTS) -> list[dict]:
    """Per part, {"detection", "map", "samples"} as evaluate() reports them (a task the model
    was not trained for: None), from an evaluation's folder of the whole split."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    found: list[dict] = [{"detection": None, "map": None, "samples": 0} for _ in range(parts)]
    if metrics["detection"] is not None and "note" in metrics["detection"]:  # no detections at all: 0 in each
        tokens = NuScenesSource(nusc.dataroot, nusc.version, split, 0, nusc=nusc).tokens
        for entry, group in zip(found, scene_parts(nusc, tokens, parts)):
            entry.update(detection=metrics["detection"], samples=len(group))
    elif metrics["detection"] is not None:
        for entry, detection in zip(found, _detection_by_part(eval_dir, nusc, split, parts)):
            entry.update(detection)
    if metrics["map"] is not None:
        counts = np.load(eval_dir / MAP_COUNTS)
        tokens = counts["tokens"].tolist()
        row = {token: index for index, token in enumerate(tokens)}
        for entry, group in zip(found, scene_parts(nusc, tokens, parts)):
            chosen = [row[token] for token in group]
            entry.update(map=map_summary(counts["intersection"][chosen].sum(axis=0),
                                         counts["union"][chosen].sum(axis=0)), samples=len(chosen))
    return found


def _detection_by_part(eval_dir: Path, nusc, split: str, parts: int) -> list[dict]:
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    # Loaded and filtered once for the whole split; each part evaluates its samples' boxes.
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(eval_dir / "results.json"), split,
                               str(eval_dir / "devkit"), verbose=False)
    ground_truth, predictions = evaluation.gt_boxes, evaluation.pred_boxes

    def subset(boxes, tokens: list[str]):
        chosen = EvalBoxes()
        for token in tokens:
            chosen.add_boxes(token, boxes[token])
        return chosen

    found = []
    for group in scene_parts(nusc, ground_truth.sample_tokens, parts):
        evaluation.gt_boxes, evaluation.pred_boxes = subset(ground_truth, group), subset(predictions, group)
        with contextlib.redirect_stdout(io.StringIO()):
            summary, _ = evaluation.evaluate()
        found.append({"detection": devkit_summary(summary), "samples": len(group)})
    return found
