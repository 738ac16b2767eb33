"""nuScenes as a user downloads it, without the separate map expansion pack: detection trains,
evaluates and converts to bags; map targets, metrics and ground-truth topics are skipped and
said once in one line naming the missing file and its download; only training a map head is
refused, in one line. Map ground truth is all or nothing per split: a split with a location's
file missing has none."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader

from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, collate_training, model_source
from vexkd_core.data.nuscenes_source import NuScenesSource, map_expansion_file, open_nuscenes
from vexkd_core.models.vexkd import build_model
from vexkd_core.training_data import TrainingData

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FAST = ["--set", "train.batch_size=1", "--set", "model.lidar.sweeps=1"]
CONFIG = load_config("tiny", ["train.batch_size=1", "model.lidar.sweeps=1"])
DOWNLOAD = '"Map expansion" pack v1.3'


def run(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def mapless_world(tiny_world, tmp_path_factory) -> Path:
    """The tiny world as real nuScenes comes without the map expansion download."""
    dataroot = tmp_path_factory.mktemp("mapless") / "world"
    shutil.copytree(tiny_world[0], dataroot)
    shutil.rmtree(dataroot / "maps" / "expansion")
    return dataroot


def skipped_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "skipped" in line]


def test_eval_of_a_map_model_scores_detection_and_says_the_map_is_skipped_once(mapless_world, tmp_path):
    torch.manual_seed(0)
    record = TrainingData("world", "v1.0-trainval", "train", 4, True)
    checkpoint = save_checkpoint(tmp_path / "lidar.pt", build_model(CONFIG, "lidar"), CONFIG, "lidar", record)
    result = run("vexkd-train", "eval", "--checkpoint", checkpoint, "--dataroot", mapless_world, "--out",
                 tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["tasks"] == "both" and 0.0 <= metrics["detection"]["NDS"] <= 1.0 and metrics["map"] is None
    assert len(json.loads((tmp_path / "eval" / "results.json").read_text())["results"]) == 8
    [line] = skipped_lines(result.stdout + result.stderr)
    assert "map" in line and "maps/expansion/" in line and DOWNLOAD in line, line
    assert "mAP" in result.stdout and "mIoU" not in result.stdout
    assert record.describe() in result.stdout and metrics["training_data"] == record.describe()


def test_a_detection_student_trains_without_the_map_expansion(mapless_world, tmp_path):
    result = run("vexkd-train", "student", "--modality", "lidar", "--dataroot", mapless_world, *FAST,
                 "--set", "train.tasks=detection", "--out", tmp_path / "run", "--max-steps", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.parametrize("tasks", ["both", "map"])
def test_training_a_map_head_without_map_ground_truth_is_refused_in_one_line(mapless_world, tmp_path, tasks):
    result = run("vexkd-train", "student", "--modality", "lidar", "--dataroot", mapless_world, *FAST,
                 "--set", f"train.tasks={tasks}", "--out", tmp_path / "run", "--max-steps", 1)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"train.tasks={tasks}" in result.stderr and "maps/expansion/" in result.stderr
    assert DOWNLOAD in result.stderr and "train.tasks=detection" in result.stderr
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_bag_is_written_without_map_topics_and_says_so_once(mapless_world, tiny_nusc, tmp_path):
    name = sorted(scene["name"] for scene in tiny_nusc.scene)[-1]
    result = subprocess.run([sys.executable, "-m", "vexkd_ros.cli", "nuscenes-to-bag", "--dataroot", str(mapless_world),
                             "--version", "v1.0-trainval", "--scene", name, "--out", str(tmp_path), "--no-sweeps"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = skipped_lines(result.stdout + result.stderr)
    assert "map" in line and "maps/expansion/" in line and DOWNLOAD in line, line
    with Reader(tmp_path / name) as reader:
        topics = {connection.topic for connection in reader.connections}
    assert "/ground_truth/markers" in topics and "/LIDAR_TOP" in topics
    assert not [topic for topic in topics if topic.startswith("/ground_truth/map/")]


def test_samples_without_maps_carry_none_and_a_map_head_cannot_learn_from_them(mapless_world):
    source = model_source(mapless_world, "v1.0-trainval", "train", CONFIG, True)
    assert source.sample(0).map_masks is None
    batch, targets = collate_training([TrainingSet(source, CONFIG, True)[0]])
    assert targets[0].map_masks is None
    model = build_model(CONFIG, "lidar")
    with pytest.raises(ValueError, match="map ground truth"):
        model.task_losses(model(batch), targets)


def split_locations(source: NuScenesSource) -> set[str]:
    nusc = source.nusc
    return {nusc.get("log", nusc.get("scene", nusc.get("sample", token)["scene_token"])["log_token"])["location"]
            for token in source.tokens}


def test_a_partial_expansion_gives_maps_to_the_splits_whose_locations_it_covers(tiny_world, tmp_path):
    """All or nothing per split: the train scene's location is present, a val scene's is not."""
    dataroot = tmp_path / "world"
    shutil.copytree(tiny_world[0], dataroot)
    nusc, grid = open_nuscenes(dataroot, "v1.0-trainval"), CONFIG.map_grid.bev
    source = lambda split: NuScenesSource(dataroot, "v1.0-trainval", split, 0, grid, nusc=nusc)  # noqa: E731
    removed = sorted(split_locations(source("val")) - split_locations(source("train")))[0]
    map_expansion_file(dataroot, removed).unlink()
    train, val = source("train"), source("val")
    assert train.maps_missing is None and train.sample(0).map_masks is not None
    assert val.maps_missing.startswith(f"no {map_expansion_file(dataroot, removed)};"), val.maps_missing
    assert all(val.ground_truth(token)[2] is None for token in val.tokens)


def test_replay_pictures_without_map_ground_truth_keep_their_size():
    from vexkd_core.classes import MAP_CLASSES
    from vexkd_core.structures import Boxes3D
    from vexkd_ros.replay_pictures import bev_panel
    from vexkd_ros.scene_messages import GT_MAP_GRID

    half_extent = GT_MAP_GRID.width * GT_MAP_GRID.resolution / 2
    truth = np.zeros((len(MAP_CLASSES), GT_MAP_GRID.height, GT_MAP_GRID.width), bool)
    with_truth = bev_panel("lidar", Boxes3D.empty(), truth, Boxes3D.empty(), {}, half_extent)
    without = bev_panel("lidar", Boxes3D.empty(), None, Boxes3D.empty(), {}, half_extent)
    assert without.shape == with_truth.shape
