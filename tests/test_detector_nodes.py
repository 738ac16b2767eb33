"""The detector nodes as separate processes, fed from the synthetic world through rclpy:
answers carry the input's stamp and frame, equal what `vexkd-train eval` predicts for the
same sample (one preprocessing path), survive bad input, and never build a backlog."""
import array
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

from tests.support.ros_nodes import (Harness, NodeOutput, cloud, feed_order, is_trigger, node_inputs, start_node,
                                     static_and_pose, stop_node, trigger_topic)
from tests.support.spread_models import spread_model
from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import load_config
from vexkd_core.data.nuscenes_source import NuScenesSource, lidar_to_global_when
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.data.sample import CAMERA_CHANNELS, Sample
from vexkd_core.geometry import invert_transform
from vexkd_core.inference import load_predictor
from vexkd_ros.autoware import AUTOWARE_LABELS, detected_objects_to_boxes
from vexkd_ros.conversions import (array_to_cloud, encoded_to_compressed, grid_to_probability,
                                   intrinsics_to_camera_info, matrices_to_tf_message, ns_to_stamp, rgb_to_compressed,
                                   stamp_to_ns, structured_points)
from vexkd_ros.scene_messages import SceneMessages, scene_source
from vexkd_ros.stack import NodeSpec
from vexkd_train.evaluate import boxes_to_results

pytestmark = pytest.mark.ros

# Every box above the threshold is kept (no top-k cut), so equal scores cannot swap places.
CONFIG = load_config("tiny", ["model.lidar.sweeps=2", "model.score_threshold=0.8", "model.max_detections=500"])
NODE = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


@pytest.fixture(scope="module")
def checkpoints(tiny_world, tmp_path_factory):
    """Random-weight models with spread scores (support/spread_models.py), as .pt and exported .onnx."""
    from vexkd_core.onnx_export import export_onnx

    dataroot, world = tiny_world
    inputs = collate([preprocess(NuScenesSource(dataroot, world.version, "val", 2).sample(0), CONFIG)[0]])
    folder = tmp_path_factory.mktemp("node_models")
    paths = {}
    for modality in ("lidar", "camera", "fusion"):
        paths[modality] = save_checkpoint(folder / f"{modality}.pt", spread_model(CONFIG, modality, inputs), CONFIG,
                                          modality)
        paths[modality, "onnxruntime"] = export_onnx(paths[modality], folder / "onnx").onnx_path
    return paths


def run_eval(checkpoint, dataroot, out):
    result = subprocess.run([sys.executable, "-m", "vexkd_train.cli", "eval", "--checkpoint", str(checkpoint),
                             "--dataroot", str(dataroot), "--split", "val", "--out", str(out), "--save-maps"],
                            capture_output=True, text=True, timeout=600)
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
                                               ("lidar", "onnxruntime"), ("camera", "onnxruntime")])
def test_node_answers_each_key_frame_as_eval_predicts(modality, backend, checkpoints, tiny_world, rclpy_context,
                                                      tmp_path):
    """With backend onnxruntime the node serves the exported graph and still answers with the
    boxes and maps torch's `vexkd-train eval` predicts (for the camera node, in the frame of
    its trigger: trigger_referenced)."""
    dataroot, world = tiny_world
    expected = camera_expectations(checkpoints[modality], dataroot, world.version) if modality == "camera" else \
        eval_expectations(checkpoints[modality], dataroot, world.version, tmp_path / "eval")
    source = scene_source(dataroot, world.version)
    scene = SceneMessages(source, sorted(source.nusc.scene, key=lambda s: s["name"])[-1]["name"])
    served = checkpoints[modality] if backend == "torch" else checkpoints[modality, backend]
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
    assert f"with {backend}" in output  # the node says what serves the model


def test_lidar_node_survives_bad_clouds_and_skips_to_the_newest(checkpoints, rclpy_context):
    process = start_node("lidar", checkpoints["lidar"])
    harness = Harness(rclpy_context, NODE["lidar"])
    harness.watch_diagnostics()
    second = 1_000_000_000
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/LIDAR_TOP": cloud(0, 1), "/tf": TFMessage(), "/tf_static": TFMessage()})
        static_and_pose(harness, [k * second // 100 for k in range(0, 2000)])
        stamp = 10 * second
        good = lambda: cloud(stamp)  # noqa: E731
        n = 1000
        bad_inputs = {  # what: (the cloud, what the node's warning about it says)
            "no x/y/z": (array_to_cloud(structured_points(intensity=np.ones(n, np.float32)),
                                        Header(stamp=ns_to_stamp(stamp), frame_id="LIDAR_TOP")), "lacks field(s) x"),
            "NaN and inf points": (cloud(stamp, n, x=np.full(n, np.nan, np.float32), y=np.full(n, np.inf, np.float32)),
                                   "no (finite) points"),
            "empty cloud": (cloud(stamp, 0), "no (finite) points"),
            "unknown frame (no TF)": (cloud(stamp, n, frame="nowhere"), "nowhere"),
        }
        for what, (bad, warning) in bad_inputs.items():
            harness.offer_until_warned(process, "/LIDAR_TOP", bad, warning, what)
            assert process.poll() is None, f"the node died on: {what}"
            harness.offer_until_answered("/LIDAR_TOP", good(), stamp)  # still serving
            harness.objects.clear()
            stamp += second // 10
        # One million points: answered (the model keeps its max_points, evenly spread).
        harness.publish("/LIDAR_TOP", cloud(stamp, 1_000_000))
        harness.answered(stamp, timeout_s=120)

        # A burst of 50 clouds at 100 Hz: the newest is answered about one model run after the
        # burst, not 50 (how many are skipped depends on the model's speed; test_pipeline.py
        # checks the skipping itself with the worker held).
        harness.objects.clear()
        harness.arrivals.clear()
        burst = [stamp + second + k * second // 100 for k in range(50)]
        for k, burst_stamp in enumerate(burst):
            harness.publish("/LIDAR_TOP", cloud(burst_stamp, 5000))
            harness.executor.spin_once(timeout_sec=0.0)
            time.sleep(0.01)
        burst_end = time.monotonic()
        harness.answered(burst[-1], timeout_s=30)
        answered = sorted(harness.objects)
        assert answered[-1] == burst[-1]
        assert set(answered) <= set(burst)
        last_arrival = max(t for t, s in harness.arrivals if s == burst[-1])
        assert last_arrival - burst_end < 10.0
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    for warning in ("point cloud skipped", "NaN/inf", "no (finite) points", "nowhere"):
        assert warning in output, f"no warning about {warning!r} in:\n{output}"


def test_camera_node_survives_bad_images_and_calibration(checkpoints, tiny_world, rclpy_context):
    dataroot, world = tiny_world
    source = scene_source(dataroot, world.version)
    scene = SceneMessages(source, sorted(source.nusc.scene, key=lambda s: s["name"])[-1]["name"])
    key = [r for r in scene.records if r["is_key_frame"]]
    first_key = [r for r in key if r["sample_token"] == key[0]["sample_token"]]
    process = start_node("camera", checkpoints["camera"])
    harness = Harness(rclpy_context, NODE["camera"])
    try:
        harness.wait_until_connected(process, trigger_topic("camera"))
        messages = [m for record in first_key for m in scene.record_messages(record)]
        harness.connect(node_inputs("camera", [scene.static_transforms(), *messages]))
        harness.publish("/tf_static", scene.static_transforms().msg)
        trigger = next(m for m in messages if m.topic == "/CAM_FRONT/image/compressed")

        def replay(replace_topic=None, replacement=None):
            harness.objects.clear()
            others = [(m.topic, replacement if m.topic == replace_topic else m.msg)
                      for m in messages if m is not trigger]
            return harness.offer_until_answered(trigger.topic, trigger.msg, trigger.stamp_ns, together_with=others)

        replay()
        header = trigger.msg.header
        corrupt = encoded_to_compressed(b"\xff\xd8 not a jpeg", header)
        tiny_jpeg = rgb_to_compressed(np.zeros((10, 10, 3), np.uint8), header)
        png_as_garbage = CompressedImage(header=header, format="bmp", data=array.array("B", b"\x00" * 10))
        zero_info = intrinsics_to_camera_info(np.zeros((3, 3)), 320, 180, header)
        k = np.array(next(m for m in messages if m.topic == "/CAM_BACK/camera_info").msg.k).reshape(3, 3)
        k[2, 2] = 0.0  # focal lengths fine, yet singular: the model would fail inverting it
        singular_info = intrinsics_to_camera_info(k, 320, 180, header)
        for topic, bad in (("/CAM_BACK/image/compressed", corrupt), ("/CAM_BACK/image/compressed", tiny_jpeg),
                           ("/CAM_BACK/image/compressed", png_as_garbage), ("/CAM_BACK/camera_info", zero_info),
                           ("/CAM_BACK/camera_info", singular_info)):
            answer = replay(topic, bad)  # answered: the other five cameras still count
            assert process.poll() is None
            assert stamp_to_ns(answer.header.stamp) == trigger.stamp_ns
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    for warning in ("could not be decoded", "but its CameraInfo says", "no valid focal length",
                    "not an invertible pinhole matrix", "camera 3 (CAM_BACK) left out"):
        assert warning in output, f"no warning about {warning!r} in:\n{output}"
    assert "failed" not in output, output


def test_bad_checkpoint_is_one_line_and_nonzero_exit(checkpoints, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    for modality, path, expected in (("lidar", tmp_path / "missing.pt", "missing.pt"),
                                     ("lidar", corrupt, "corrupt.pt"),
                                     ("camera", checkpoints["lidar"], "lidar")):
        result = subprocess.run(NodeSpec(modality, path).command(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    result = subprocess.run(NodeSpec("lidar", checkpoints["lidar"]).command() + ["-p", "map_classes:=['roads']"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "map_classes" in result.stderr and "Traceback" not in result.stderr


def test_bad_parameters_at_start_are_one_line_and_exit_2(checkpoints):
    cases = {"score_threshold:=0": "score_threshold", "score_threshold:=2.0": "score_threshold",
             "sweeps:=50": "sweeps", "class_score_threshold.car:=1.5": "class_score_threshold.car",
             "fixed_frame:=''": "fixed_frame", "tf_timeout:=5.0": "tf_timeout", "tf_timeout:=-0.1": "tf_timeout"}
    command = NodeSpec("lidar", checkpoints["lidar"]).command()
    # Started together: each one spends its time importing torch.
    runs = {parameter: subprocess.Popen(command + ["-p", parameter], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for parameter in cases}
    for parameter, process in runs.items():
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 2, (parameter, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and f"'{cases[parameter]}'" in lines[0], (parameter, stderr)


def set_parameters(harness, node_name: str, **values) -> dict[str, SetParametersResult]:
    """`ros2 param set` through the node's service, one result per parameter."""
    client = harness.node.create_client(SetParameters, f"/{node_name}/set_parameters")
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()
                                                for name, value in values.items()])
    response = harness.call(client, request, 30, "set_parameters to answer")
    harness.node.destroy_client(client)
    return dict(zip(values, response.results))


def test_parameters_set_at_run_time_apply_or_are_refused(checkpoints, rclpy_context):
    process = start_node("lidar", checkpoints["lidar"])
    harness = Harness(rclpy_context, NODE["lidar"])
    second = 1_000_000_000
    markers, drivable = "/lidar_detector/output/markers", "/lidar_detector/output/map/drivable_area"
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/LIDAR_TOP": cloud(0, 1), "/tf": TFMessage(), "/tf_static": TFMessage()})
        static_and_pose(harness, [k * second // 10 for k in range(0, 200)])
        before = harness.offer_until_answered("/LIDAR_TOP", cloud(10 * second), 10 * second)
        assert len(before.detections) > 0

        refused = set_parameters(harness, NODE["lidar"], checkpoint="/elsewhere.pt", sweeps=3, score_threshold=2.0,
                                 map_classes=["roads"], fixed_frame="")
        assert not any(result.successful for result in refused.values()), refused
        assert "map_classes" in refused["map_classes"].reason and "read-only" in refused["sweeps"].reason

        applied = set_parameters(harness, NODE["lidar"], score_threshold=1.0, publish_markers=False,
                                 map_classes=["divider"])
        assert all(result.successful for result in applied.values()), applied
        strict = harness.offer_until_answered("/LIDAR_TOP", cloud(11 * second), 11 * second)
        assert len(strict.detections) == 0  # no score reaches 1.0
        harness.spin_until(lambda: harness.node.count_publishers(markers) == 0 and
                           harness.node.count_publishers(drivable) == 0, 30, "markers and drivable_area to stop")
        assert set_parameters(harness, NODE["lidar"], score_threshold=-1.0)["score_threshold"].successful
        again = harness.offer_until_answered("/LIDAR_TOP", cloud(12 * second), 12 * second)
        assert len(again.detections) == len(before.detections)  # the checkpoint's threshold again
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


def test_lidar_node_keeps_tf_through_bad_transforms_and_any_fixed_frame(checkpoints, rclpy_context):
    """REP-105 (map -> odom -> base_link) with fixed_frame odom; on the way a /tf an hour
    ahead, a zero quaternion and a cloud without a frame: past sweeps are placed throughout."""
    process = start_node("lidar", checkpoints["lidar"], "fixed_frame:=odom")
    harness = Harness(rclpy_context, NODE["lidar"])
    second = 1_000_000_000
    stamps = [10 * second + k * second // 20 for k in range(12)]
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/LIDAR_TOP": cloud(0, 1), "/tf": TFMessage(), "/tf_static": TFMessage()})
        harness.publish("/tf_static", matrices_to_tf_message([("base_link", "LIDAR_TOP", np.eye(4), ns_to_stamp(0))]))
        harness.publish("/tf", matrices_to_tf_message([("map", "odom", np.eye(4), ns_to_stamp(0))]))
        zero = matrices_to_tf_message([("odom", "base_link", np.eye(4), ns_to_stamp(stamps[6]))])
        zero.transforms[0].transform.rotation.w = 0.0
        ahead = matrices_to_tf_message([("odom", "base_link", np.eye(4), ns_to_stamp(stamps[3] + 3600 * second))])
        for k, stamp in enumerate(stamps):
            moved = np.eye(4)
            moved[0, 3] = 0.5 * k
            if k == 3:
                harness.publish("/tf", ahead)
            if k == 6:
                harness.publish("/tf", zero)
            harness.publish("/tf", matrices_to_tf_message([("odom", "base_link", moved, ns_to_stamp(stamp))]))
            time.sleep(0.02)
            if k == 8:
                # Sensor input is best effort with depth 1 (the newest wins): under load the node
                # may never take one copy before the next cloud replaces it, so offer it a few times.
                for _ in range(5):
                    harness.publish("/LIDAR_TOP", cloud(stamp, 5000, frame=""))
                    time.sleep(0.2)
                continue
            harness.answer_to("/LIDAR_TOP", cloud(stamp, 5000, frame="LIDAR_TOP"), stamp)
        harness.executor.spin_once(timeout_sec=0.5)
        assert stamps[8] not in harness.objects  # no answer with frame_id ''
        assert all(answer.header.frame_id == "LIDAR_TOP" for answer in harness.objects.values())
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    assert "zero or non-finite quaternion" in output and "header.frame_id is empty" in output, output
    for symptom in ("past sweep left out", "no transform", "failed"):
        assert symptom not in output, output


@pytest.mark.parametrize("tf_timeout, placed", [(2.0, True), (0.1, False)])
def test_lidar_node_waits_for_a_lagging_localiser_up_to_tf_timeout(tf_timeout, placed, checkpoints, rclpy_context):
    """/tf for each cloud's stamp comes 300 ms after the cloud (a localiser lagging the LiDAR),
    clouds at 10 Hz: with tf_timeout 2.0 (the most it takes: slack for a loaded machine, where
    this process may stall between a cloud and its pose) every answered cloud waited for its
    pose and has its past sweeps; with 0.1 the clouds run without them, and the node says so
    naming tf_timeout."""
    # Few boxes and no grids: this process must keep the 10 Hz pace, not read 500-box frames.
    process = start_node("lidar", checkpoints["lidar"], f"tf_timeout:={tf_timeout}", "score_threshold:=0.99",
                         "map_classes:=['']")
    harness = Harness(rclpy_context, NODE["lidar"])
    second, lag = 1_000_000_000, 3  # three clouds at 10 Hz: 300 ms
    stamps = [10 * second + k * second // 10 for k in range(16)]
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/LIDAR_TOP": cloud(0, 1), "/tf": TFMessage(), "/tf_static": TFMessage()})
        harness.publish("/tf_static", matrices_to_tf_message([("base_link", "LIDAR_TOP", np.eye(4), ns_to_stamp(0))]))
        started = time.monotonic()
        for k in range(len(stamps) + lag):
            if k < len(stamps):
                harness.publish("/LIDAR_TOP", cloud(stamps[k], 5000))
            if k >= lag:
                harness.publish("/tf", matrices_to_tf_message([("map", "base_link", np.eye(4),
                                                                ns_to_stamp(stamps[k - lag]))]))
            while time.monotonic() < started + 0.1 * (k + 1):
                harness.executor.spin_once(timeout_sec=0.01)
        harness.spin_until(lambda: stamps[-1] in harness.objects, 30, "an answer to the last cloud")
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    if placed:
        for symptom in ("past sweep left out", "no transform", "failed"):
            assert symptom not in output, output
    else:
        assert f"at the trigger's stamp within tf_timeout {tf_timeout} s" in output, output


def test_a_clock_reset_clears_the_tf_history(checkpoints, rclpy_context):
    """A looped bag played with --clock: /clock jumps back, /tf history from the first pass goes."""
    from rosgraph_msgs.msg import Clock

    process = start_node("lidar", checkpoints["lidar"], "use_sim_time:=true")
    printed = NodeOutput(process)
    harness = Harness(rclpy_context, NODE["lidar"])
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/clock": Clock(clock=ns_to_stamp(1000 * 10**9))})
        for seconds in (1000, 1001, 10):
            harness.publish("/clock", Clock(clock=ns_to_stamp(seconds * 10**9)))
            harness.executor.spin_once(timeout_sec=0.2)
        printed.wait_for("ROS time jumped back", 30)  # the node's own line that it took the jump
    finally:
        output = stop_node(process, printed)
    assert process.returncode == 0, output
    assert "ROS time jumped back 991.0 s: /tf history cleared" in output, output
