"""The paper-scale path on full-resolution sensors, as a user on real nuScenes runs it: a
world at nuScenes fidelity (six 1600x900 JPEG cameras, 32-beam LiDAR, 10 sweeps), its
GT database, then teacher, mask generators, both distilled students and evaluation at the
`nuscenes` preset, a step each. Only the network widths are cut (`--set`) so this fits the
test suite; grids, image input, depth bins, sweeps, point budget, augmentation, GT-paste and
CBGS are the preset's. bench/bench_full_resolution.py runs the preset itself."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vexkd_core.checkpoint import load_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import model_source

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
VERSION = "v1.0-trainval"
NARROW = ["model.bev_channels=32", "model.decoder_channels=[32,64]", "model.decoder_out_channels=64",
          "model.head_channels=32", "model.camera.backbone=small", "model.camera.feature_channels=64",
          "model.lidar.pillar_channels=32", "model.fusion.layers=1", "model.fusion.heads=4",
          "model.fusion.ffn_channels=64", "train.batch_size=1", "train.workers=0"]


def run(tool: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def preset_args() -> list[str]:
    return ["--config", "nuscenes", *(a for item in NARROW for a in ("--set", item))]


@pytest.fixture(scope="module")
def full_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full") / "world"
    run("vexkd-data", "synth", "--out", root, "--scenes", 2, "--val-scenes", 1, "--samples-per-scene", 2,
        "--camera-sweeps", 0, "--image-size", "1600x900", "--version", VERSION, "--workers", 2)
    run("vexkd-data", "gt-database", "--dataroot", root, "--version", VERSION)
    return root


def test_a_full_resolution_sample_reaches_the_preset_as_nuscenes_does(full_world):
    config = load_config("nuscenes", NARROW)
    # The scene's second key frame: the first, as in nuScenes, has no sweeps before it.
    sample = model_source(full_world, VERSION, "train", config, augmented=True).sample(1)
    lags = np.unique(np.round(sample.points[:, 4], 3))
    assert len(lags) == 10, lags  # the key sweep and 9 before it, 20 Hz apart
    # nuScenes-scale clouds: a real key frame has 26.5k returns beyond the ego's roof (1 m), the
    # synthetic world 15-20k (its roof and bonnet shade about two more beams:
    # docs/synthetic_world.md), so ten sweeps bring well over 120k points to the preset.
    assert len(sample.points) > 120_000
    # 704 of 1600 pixels wide: decoded at half size, with K scaled to match
    for view in sample.cameras:
        assert view.image.shape == (450, 800, 3)
        assert view.intrinsics[0, 2] == pytest.approx(400.0, abs=1.0)


def test_teacher_masks_distilled_students_and_eval_run_at_the_nuscenes_preset(full_world, tmp_path):
    run("vexkd-train", "teacher", "--dataroot", full_world, *preset_args(), "--out", tmp_path / "teacher",
        "--max-steps", 1)
    teacher = tmp_path / "teacher" / "model.pt"
    config = load_checkpoint(teacher)["config"]
    assert config["name"] == "nuscenes" and config["grid"]["resolution_m"] == 0.6
    assert (config["model"]["camera"]["input_width"], config["model"]["lidar"]["sweeps"]) == (704, 9)
    assert config["augment"]["gt_paste"] and config["train"]["cbgs"]
    run("vexkd-train", "masks", "--teacher", teacher, "--dataroot", full_world, "--out", tmp_path / "masks",
        "--max-steps", 1, "--batch-size", 1)
    assert len((tmp_path / "masks" / "log.csv").read_text().splitlines()) == 2  # header + the one step
    selectivity = json.loads((tmp_path / "masks" / "selectivity.json").read_text())
    assert {"detection/low", "detection/high", "segmentation/low", "segmentation/high"} <= set(selectivity)
    for modality in ("lidar", "camera"):
        out = tmp_path / modality
        run("vexkd-train", "student", "--modality", modality, "--teacher", teacher, "--masks",
            tmp_path / "masks" / "masks.pt", "--distill", "vexkd", "--dataroot", full_world, *preset_args(),
            "--out", out, "--max-steps", 1)
        header = (out / "log.csv").read_text().splitlines()[0].split(",")
        assert {"distill_low_detection", "distill_high_segmentation"} <= set(header), header
        run("vexkd-train", "eval", "--checkpoint", out / "model.pt", "--dataroot", full_world, "--out", out / "eval")
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        assert metrics["samples"] == 2 and 0.0 <= metrics["detection"]["NDS"] <= 1.0
        assert len(metrics["map"]["iou"]) == 6
