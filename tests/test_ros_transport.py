"""Messages built by the conversions cross a real process boundary intact (real rclpy, DDS)."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from tests.support import ros_samples
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_ros import box_messages
from vexkd_ros import conversions as conv

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parent.parent
# The publisher runs as a module of the tests package, from the repository root.
PEER = [sys.executable, "-m", "tests.support.ros_peer"]


def receive_one_of_each(context, timeout_s: float = 60.0) -> dict:
    expected = ros_samples.messages(seed=3)
    node = rclpy.create_node("vexkd_test_receiver", context=context)
    received: dict = {}
    for topic, msg in expected.items():
        node.create_subscription(type(msg), topic,
                                 lambda m, t=topic: received.setdefault(t, m), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    peer = subprocess.Popen([*PEER, "3"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while len(received) < len(expected) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            assert peer.poll() is None, "publisher process died"
    finally:
        peer.terminate()
        _, peer_errors = peer.communicate(timeout=10)
        node.destroy_node()
    # Fast DDS reports a profile it cannot parse on stderr and falls back to defaults.
    assert "XMLPARSER" not in peer_errors, peer_errors
    assert set(received) == set(expected), f"only received {sorted(received)}"
    return received


def test_messages_arrive_intact_from_another_process(rclpy_context):
    received = receive_one_of_each(rclpy_context)

    cloud = conv.cloud_to_array(received["/sample/cloud"])
    sent_cloud = ros_samples.cloud_columns(seed=3)
    assert cloud.dtype.names == sent_cloud.dtype.names
    for name in sent_cloud.dtype.names:
        np.testing.assert_array_equal(cloud[name], sent_cloud[name])
    assert received["/sample/cloud"].header.frame_id == "LIDAR_TOP"
    assert conv.stamp_to_ns(received["/sample/cloud"].header.stamp) == ros_samples.STAMP_NS

    np.testing.assert_array_equal(conv.image_to_rgb(received["/sample/image"]),
                                  ros_samples.rgb_image(seed=3))

    boxes = box_messages.detections_to_boxes(received["/sample/objects"], DETECTION_CLASSES, received["/sample/velocities"])
    sent_boxes = ros_samples.boxes(seed=3)
    for field in ("center", "size_lwh", "score"):
        np.testing.assert_allclose(getattr(boxes, field), getattr(sent_boxes, field), atol=1e-9)
    np.testing.assert_allclose(boxes.velocity, sent_boxes.velocity, rtol=1e-6)  # float32 fields
    np.testing.assert_allclose(np.cos(boxes.yaw - sent_boxes.yaw), 1.0, atol=1e-9)
    np.testing.assert_array_equal(boxes.label, sent_boxes.label)

    probability, grid = conv.grid_to_probability(received["/sample/map"])
    assert grid == ros_samples.GRID
    np.testing.assert_allclose(probability, ros_samples.probability_map(seed=3), atol=1e-9)
