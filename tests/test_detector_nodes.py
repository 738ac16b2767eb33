"""The detector nodes as separate processes, fed from the synthetic world through rclpy:
answers carry the input's stamp and frame, equal what `vexkd-train eval` predicts for the
same sample (one preprocessing path), survive bad input, and never build a backlog."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from ros_nodes import Harness, feed_order, is_trigger, start_node, stop_node, trigger_topic

from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import load_config
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.models.vexkd import build_model
from vexkd_ros.conversions import detections_to_boxes, grid_to_probability, stamp_to_ns
from vexkd_ros.scene_messages import SceneMessages, scene_source
from vexkd_train.evaluate import boxes_to_results

# Every box above the threshold is kept (no top-k cut), so equal scores cannot swap places.
CONFIG = load_config("tiny", ["model.lidar.sweeps=2", "model.score_threshold=0.8", "model.max_detections=500"])
NODE = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


@pytest.fixture(scope="module")
def checkpoints(tiny_world, tmp_path_factory):
    """Random-weight models (proof of life) whose heatmap logits are spread to mean -6, std 2.

    Untrained heads give nearly equal scores everywhere (std 1e-5), so which of two near-tied
    cells peaks would be decided by float noise; spread scores make the comparison strict.
    """
    dataroot, world = tiny_world
    inputs = collate([preprocess(NuScenesSource(dataroot, world.version, "val", 2).sample(0), CONFIG)[0]])
    folder = tmp_path_factory.mktemp("node_models")
    paths = {}
    for modality in ("lidar", "camera", "fusion"):
        torch.manual_seed(3)
        model = build_model(CONFIG, modality).eval()
        classifier = model.heads.detection_head.heatmap[-1]
        with torch.no_grad():
            logits = (model(inputs).detection["heatmap"][0] - classifier.bias[:, None, None]).flatten(1)
            scale = 2.0 / logits.std(dim=1)
            classifier.weight *= scale[:, None, None, None]
            classifier.bias.copy_(-6.0 - scale * logits.mean(dim=1))
        paths[modality] = save_checkpoint(folder / f"{modality}.pt", model, CONFIG, modality)
    return paths


def run_eval(checkpoint, dataroot, out):
    result = subprocess.run([sys.executable, "-m", "vexkd_train.cli", "eval", "--checkpoint", str(checkpoint),
                             "--dataroot", str(dataroot), "--split", "val", "--out", str(out), "--save-maps"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    return results, np.load(out / "maps.npz")


def assert_same_records(node_records, eval_records):
    """One-to-one: every node box has an eval box of its class at the same place and score."""
    assert len(node_records) == len(eval_records) > 0
    centres = np.array([r["translation"] for r in eval_records])
    matched = set()
    for mine in node_records:
        distance = np.linalg.norm(centres - mine["translation"], axis=1)
        distance[[r["detection_name"] != mine["detection_name"] for r in eval_records]] = np.inf
        index = int(np.argmin(distance))
        theirs = eval_records[index]
        assert distance[index] < 2e-3, (mine, theirs)
        np.testing.assert_allclose(mine["detection_score"], theirs["detection_score"], atol=1e-4)
        np.testing.assert_allclose(mine["size"], theirs["size"], atol=2e-3)
        np.testing.assert_allclose(mine["velocity"], theirs["velocity"], atol=2e-3)
        assert abs(np.dot(mine["rotation"], theirs["rotation"])) > 1 - 1e-5
        matched.add(index)
    assert len(matched) == len(eval_records)


@pytest.mark.parametrize("modality", ["lidar", "camera", "fusion"])
def test_node_answers_each_key_frame_as_eval_predicts(modality, checkpoints, tiny_world, rclpy_context, tmp_path):
    dataroot, world = tiny_world
    eval_results, eval_maps = run_eval(checkpoints[modality], dataroot, tmp_path / "eval")
    source = scene_source(dataroot, world.version)
    scene = SceneMessages(source, sorted(source.nusc.scene, key=lambda s: s["name"])[-1]["name"])
    process = start_node(modality, checkpoints[modality])
    harness = Harness(rclpy_context, NODE[modality])
    try:
        harness.wait_until_connected(process, trigger_topic(modality))
        harness.publish("/tf_static", scene.static_transforms().msg)
        compared = 0
        for record in feed_order(scene.records, modality):
            if is_trigger(modality, record):
                time.sleep(0.05)  # what came before the trigger has arrived, as in a live stream
            for message in scene.record_messages(record):
                harness.publish(message.topic, message.msg)
            if not is_trigger(modality, record):
                continue
            stamp = record["timestamp"] * 1000
            answer = harness.answered(stamp)
            expected_frame = "LIDAR_TOP"  # the camera node's bev_frame defaults to the trained LiDAR frame
            assert answer.header.frame_id == expected_frame and stamp_to_ns(answer.header.stamp) == stamp
            if not record["is_key_frame"]:
                continue
            token = record["sample_token"]
            lidar_to_global = source.ground_truth(token)[0]
            boxes = detections_to_boxes(answer, DETECTION_CLASSES)
            assert_same_records(boxes_to_results(boxes, lidar_to_global, token), eval_results[token])
            harness.spin_until(lambda: all(stamp in grids for grids in harness.maps.values()), 30, "the maps")
            for index, name in ((0, "drivable_area"), (5, "divider")):
                probability, _ = grid_to_probability(harness.maps[name][stamp])
                np.testing.assert_allclose(probability, eval_maps[token][index].astype(np.float32), atol=0.011)
            compared += 1
        assert compared == scene.scene["nbr_samples"]
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output

