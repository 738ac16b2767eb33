"""The detector nodes as separate processes, fed from the synthetic world through rclpy:
answers carry the input's stamp and frame and equal what `vexkd-train eval` predicts for the
same sample (one preprocessing path), with torch and with onnxruntime serving the model.
test_detector_node_robustness.py feeds them bad input, parameters and TF."""
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from tests.support.node_checkpoints import NODE, spread_checkpoints
from tests.support.ros_nodes import Harness, feed_order, is_trigger, node_inputs, start_node, stop_node, trigger_topic
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.data.nuscenes_source import NuScenesSource, lidar_to_global_when
from vexkd_core.data.sample import CAMERA_CHANNELS, Sample
from vexkd_core.geometry import invert_transform
from vexkd_core.inference import load_predictor
from vexkd_ros.autoware import AUTOWARE_LABELS, detected_objects_to_boxes
from vexkd_ros.conversions import grid_to_probability, stamp_to_ns
from vexkd_ros.scene_messages import SceneMessages, scene_source
from vexkd_train.evaluate import boxes_to_results

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def checkpoints(tiny_world, trained_lidar_graphs, tmp_path_factory):
    """Random-weight models with spread scores (support/node_checkpoints.py), as .pt and exported
    .onnx; and the trained LiDAR student's int8 graph (int8 is calibrated and checked on a
    model's training data: random weights have none)."""
    from vexkd_core.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("node_models")
    paths = spread_checkpoints(tiny_world, folder, ("lidar", "camera", "fusion"))
    paths.update({(modality, "onnxruntime"): export_onnx(path, folder / "onnx").onnx_path
                  for modality, path in paths.items()})
    paths["lidar", "int8"] = trained_lidar_graphs[1]
    return paths


def run_eval(model_file, dataroot, out):
    backend = "onnxruntime" if Path(model_file).suffix == ".onnx" else "torch"
    result = subprocess.run([sys.executable, "-m", "vexkd_train.cli", "eval", "--checkpoint", str(model_file),
                             "--backend", backend, "--dataroot", str(dataroot), "--split", "val", "--out", str(out),
                             "--save-maps"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    return results, np.load(out / "maps.npz")


def eval_expectations(checkpoint, dataroot, version, out):
    """token -> (eval's result records, its maps, the LiDAR-to-global of the frame they are in)."""
    results, maps = run_eval(checkpoint, dataroot, out)
    source = scene_source(dataroot, version)
    return lambda token: (results[token], maps[token], source.ground_truth(token)[0])


def trigger_referenced(source, token: str) -> Sample:
    """The key frame as the camera node sees it: in LIDAR_TOP where the ego stood when the
    trigger camera (CAM_FRONT) fired, not at the LiDAR's stamp as eval's sample is (nuScenes'
    cameras fire up to 43 ms before the LiDAR). Same images and calibration; only the
    reference frame moves, so the same model must give the same boxes in the global frame."""
    sample = source.sample(source.tokens.index(token))
    reference_to_global = lidar_to_global_when(source.nusc, token, CAMERA_CHANNELS[0])
    key_to_reference = invert_transform(reference_to_global) @ sample.lidar_to_global
    cameras = [dataclasses.replace(view, camera_to_lidar=key_to_reference @ view.camera_to_lidar)
               for view in sample.cameras]
    return dataclasses.replace(sample, points=sample.points[:0], cameras=cameras, lidar_to_global=reference_to_global,
                               boxes=None, map_masks=None)


def camera_expectations(checkpoint, dataroot, version):
    """token -> what the model eval runs predicts for the key frame referenced to the camera
    node's trigger (trigger_referenced): records, maps, the frame's LiDAR-to-global."""
    predictor, source = load_predictor(checkpoint), NuScenesSource(dataroot, version, "val", 0)

    def expected(token: str):
        sample = trigger_referenced(source, token)
        prediction = predictor(sample)
        return (boxes_to_results(prediction.boxes, sample.lidar_to_global, token), prediction.map_probability,
                sample.lidar_to_global)
    return expected


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


def assert_autoware_carries(harness, stamp_ns, boxes):
    """The node's DetectedObjects for a frame hold the boxes of its Detection3DArray, in order."""
    harness.spin_until(lambda: stamp_ns in harness.autoware, 30, "the Autoware objects")
    msg = harness.autoware[stamp_ns]
    assert msg.header == harness.objects[stamp_ns].header
    theirs, labels = detected_objects_to_boxes(msg)
    np.testing.assert_allclose(theirs.center, boxes.center, atol=1e-9)
    np.testing.assert_allclose(theirs.size_lwh, boxes.size_lwh, atol=1e-9)
    np.testing.assert_allclose(np.cos(theirs.yaw - boxes.yaw), 1.0, atol=1e-9)
    np.testing.assert_allclose(theirs.velocity, boxes.velocity, atol=1e-4)  # the velocity cloud is float32
    np.testing.assert_allclose(theirs.score, boxes.score, atol=1e-6)
    assert labels.tolist() == [AUTOWARE_LABELS[DETECTION_CLASSES[k]] for k in boxes.label]


def assert_rviz_draws(harness, stamp_ns, boxes):
    """An RViz marker display on the node's markers shows this frame's boxes at or above
    marker_score_threshold (0.3, the default): a label with class and score and a wireframe
    each, under the frame's header, and nothing left of earlier frames."""
    harness.spin_until(lambda: harness.markers_stamp == stamp_ns, 30, "the markers")
    shown = list(harness.shown_markers.shown.values())
    drawn = boxes.select(boxes.score >= 0.3)
    assert sorted(m.text for m in shown if m.type == Marker.TEXT_VIEW_FACING) == \
        sorted(f"{DETECTION_CLASSES[label]} {score:.2f}" for label, score in zip(drawn.label, drawn.score))
    assert sum(len(m.points) for m in shown if m.ns == "detections/boxes") == 24 * len(drawn)  # 12 edges a box
    assert all(m.header == harness.objects[stamp_ns].header for m in shown)


@pytest.mark.parametrize("modality, backend", [("lidar", "torch"), ("camera", "torch"), ("fusion", "torch"),
                                               ("lidar", "onnxruntime"), ("camera", "onnxruntime"),
                                               ("lidar", "int8")])
def test_node_answers_each_key_frame_as_eval_predicts(modality, backend, checkpoints, tiny_world, rclpy_context,
                                                      tmp_path):
    """With backend onnxruntime the node serves the exported graph and still answers with the
    boxes and maps torch's `vexkd-train eval` predicts (for the camera node, in the frame of
    its trigger: trigger_referenced); an int8 graph (backend onnxruntime) with what eval
    predicts with that graph."""
    dataroot, world = tiny_world
    served = checkpoints[modality] if backend == "torch" else checkpoints[modality, backend]
    reference = served if backend == "int8" else checkpoints[modality]
    expected = camera_expectations(reference, dataroot, world.version) if modality == "camera" else \
        eval_expectations(reference, dataroot, world.version, tmp_path / "eval")
    source = scene_source(dataroot, world.version)
    scene = SceneMessages(source, sorted(source.nusc.scene, key=lambda s: s["name"])[-1]["name"])
    process = start_node(modality, served)
    harness = Harness(rclpy_context, NODE[modality])
    try:
        harness.wait_until_connected(process, trigger_topic(modality))
        harness.connect(node_inputs(modality, scene))
        harness.publish("/tf_static", scene.static_transforms().msg)
        compared, since_trigger = 0, []
        for record in feed_order(scene.records, modality):
            messages = list(scene.record_messages(record))
            trigger = next((m for m in messages if m.topic == trigger_topic(modality)), None) \
                if is_trigger(modality, record) else None
            for message in messages:
                if message is not trigger:
                    harness.publish(message.topic, message.msg)
                    since_trigger.append((message.topic, message.msg))
            if trigger is None:
                continue
            time.sleep(0.05)  # what came before the trigger has arrived, as in a live stream
            stamp = record["timestamp"] * 1000
            answer = harness.answer_to(trigger.topic, trigger.msg, stamp, together_with=since_trigger)
            since_trigger = []
            expected_frame = "LIDAR_TOP"  # the camera node's bev_frame defaults to the trained LiDAR frame
            assert answer.header.frame_id == expected_frame and stamp_to_ns(answer.header.stamp) == stamp
            if not record["is_key_frame"]:
                continue
            token = record["sample_token"]
            expected_records, expected_maps, lidar_to_global = expected(token)
            boxes = harness.boxes(stamp)
            assert_same_records(boxes_to_results(boxes, lidar_to_global, token), expected_records)
            assert_autoware_carries(harness, stamp, boxes)
            assert_rviz_draws(harness, stamp, boxes)
            harness.spin_until(lambda: all(stamp in grids for grids in harness.maps.values()), 30, "the maps")
            for index, name in ((0, "drivable_area"), (5, "divider")):
                probability, _ = grid_to_probability(harness.maps[name][stamp])
                np.testing.assert_allclose(probability, expected_maps[index].astype(np.float32), atol=0.011)
            compared += 1
        assert compared == scene.scene["nbr_samples"]
    finally:
        output = stop_node(process)
        print(output)  # shown by pytest when the test fails
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    # the node says what serves the model
    assert ("with onnxruntime with CPUExecutionProvider, int8 graph" if backend == "int8" else f"with {backend}") \
        in output
