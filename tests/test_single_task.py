"""`train.tasks`: a model trained for one task has only that head, trains only its loss, is
distilled only through that task's masks, and is evaluated on that task alone."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vexkd_core.checkpoint import load_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, collate_training, model_source
from vexkd_core.distill.distiller import Distiller
from vexkd_core.models.vexkd import build_model
from vexkd_train.masks import MaskSettings, build_generators

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FAST = ["train.batch_size=1", "model.lidar.sweeps=1"]


def test_a_map_model_trains_evaluates_and_reports_only_the_map(tiny_world, tmp_path):
    dataroot = tiny_world[0]
    run = lambda *args: subprocess.run([str(BIN / "vexkd-train"), *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, timeout=900)
    trained = run("student", "--modality", "lidar", "--dataroot", dataroot, "--set", "train.tasks=map",
                  *(a for item in FAST for a in ("--set", item)), "--out", tmp_path / "map", "--max-steps", 2)
    assert trained.returncode == 0, trained.stderr[-2000:]
    keys = load_checkpoint(tmp_path / "map" / "model.pt")["model"]
    assert any(k.startswith("heads.segmentation.") for k in keys)
    assert not any(k.startswith("heads.detection.") for k in keys)
    header = (tmp_path / "map" / "log.csv").read_text().splitlines()[0].split(",")
    assert "map" in header and "heatmap" not in header, header
    result = run("eval", "--checkpoint", tmp_path / "map" / "model.pt", "--dataroot", dataroot, "--out",
                 tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["tasks"] == "map" and metrics["detection"] is None
    assert set(metrics["map"]["iou"]) == {"drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area",
                                          "divider"}
    assert "mIoU" in result.stdout and "mAP" not in result.stdout
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_detection_model_has_no_map_head_and_no_map_loss(tiny_world):
    config = load_config("tiny", FAST + ["train.tasks=detection"])
    dataset = TrainingSet(model_source(tiny_world[0], tiny_world[1].version, "train", config, True), config, True)
    batch, targets = collate_training([dataset[0]])
    model = build_model(config, "camera")
    output = model(batch)
    assert output.map_logits is None and output.detection is not None
    losses = model.task_losses(output, targets)
    assert "map" not in losses and "heatmap" in losses
    sum(losses.values()).backward()


def test_a_map_student_is_distilled_through_the_segmentation_masks_only(tiny_world):
    both = load_config("tiny", FAST)
    torch.manual_seed(0)
    teacher = build_model(both, "fusion")
    generators = build_generators(teacher, MaskSettings())
    student = build_model(load_config("tiny", FAST + ["train.tasks=map"]), "lidar")
    distiller = Distiller(teacher, student, "vexkd", ("low", "high"), "at", {"low": 1.0, "high": 1.0}, generators)
    assert distiller.task_weights == {"segmentation": 1.0}
    dataset = TrainingSet(model_source(tiny_world[0], tiny_world[1].version, "train", both, True), both, True)
    batch, targets = collate_training([dataset[0]])
    losses = distiller(student, batch, student(batch), targets)
    assert set(losses) == {"distill_low_segmentation", "distill_high_segmentation"}


def test_box_masks_need_a_detection_head_in_the_student_or_the_teacher():
    map_only = load_config("tiny", FAST + ["train.tasks=map"])
    student, both = build_model(map_only, "lidar"), load_config("tiny", FAST)
    for mode in ("gaussian", "foreground"):
        with pytest.raises(ValueError, match="needs one"):
            Distiller(build_model(map_only, "fusion"), student, mode, ("high",), "at", {"high": 1.0})
        Distiller(build_model(both, "fusion"), student, mode, ("high",), "at", {"high": 1.0})  # its teacher's boxes


def test_masks_of_a_detection_teacher_cannot_distil_a_map_student():
    teacher = build_model(load_config("tiny", FAST + ["train.tasks=detection"]), "fusion")
    generators = build_generators(teacher, MaskSettings())
    assert set(generators) == {"detection/low", "detection/high"}
    student = build_model(load_config("tiny", FAST + ["train.tasks=map"]), "lidar")
    try:
        Distiller(teacher, student, "vexkd", ("high",), "at", {"high": 1.0}, generators)
    except ValueError as error:
        assert "no segmentation generators" in str(error)
    else:
        raise AssertionError("a map student was accepted for detection-only masks")


def test_an_unknown_task_is_a_one_line_error(tiny_world, tmp_path):
    result = subprocess.run([str(BIN / "vexkd-train"), "teacher", "--dataroot", str(tiny_world[0]), "--set",
                             "train.tasks=segmentation", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "train.tasks must be detection, map or both" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
