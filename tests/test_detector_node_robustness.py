"""The detector nodes as separate processes, fed through rclpy with what a live system may
send them: they survive bad clouds, images, checkpoints, parameters and transforms, saying what
they left out, never build a backlog, and wait for a lagging localiser up to tf_timeout.
test_detector_nodes.py checks what they answer to good input."""
import array
import subprocess
import time

import numpy as np
import pytest
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from tests.support.node_checkpoints import NODE, spread_checkpoints
from tests.support.ros_nodes import (Harness, NodeOutput, cloud, node_inputs, start_node, static_and_pose, stop_node,
                                     trigger_topic)
from vexkd_ros.conversions import (array_to_cloud, encoded_to_compressed, intrinsics_to_camera_info,
                                   matrices_to_tf_message, ns_to_stamp, rgb_to_compressed, stamp_to_ns,
                                   structured_points)
from vexkd_ros.scene_messages import SceneMessages, scene_source
from vexkd_ros.stack import NodeSpec

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def checkpoints(tiny_world, tmp_path_factory):
    """Random-weight models with spread scores (support/node_checkpoints.py), as .pt."""
    return spread_checkpoints(tiny_world, tmp_path_factory.mktemp("node_models"), ("lidar", "camera"))


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
