"""Test harness for the detector nodes: start one as its own process, feed it messages from
this process through real rclpy, collect what it publishes."""
from __future__ import annotations

import subprocess
import threading
import time
from typing import Callable, Sequence

import numpy as np
import rclpy
from autoware_perception_msgs.msg import DetectedObjects
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from tests.support import ros_rviz
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.inference import model_file_backend
from vexkd_core.structures import Boxes3D
from vexkd_ros.box_messages import detections_to_boxes
from vexkd_ros.conversions import (array_to_cloud, matrices_to_tf_message, ns_to_stamp, stamp_to_ns,
                                   structured_points)
from vexkd_ros.stack import NodeSpec

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_node(modality: str, checkpoint, *parameters: str) -> subprocess.Popen:
    """The node exactly as `vexkd-ros stack` starts it (backend onnxruntime for an .onnx), plus
    extra `name:=value` parameters."""
    command = NodeSpec(modality, checkpoint, model_file_backend(checkpoint)).command()
    for parameter in parameters:
        command += ["-p", parameter]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class NodeOutput:
    """What a node process prints, read line by line as it comes (a thread), so that a test
    can wait for a line; stop_node(process, this) then returns all of it."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines = process, []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> None:
        """Until a line holds `text`, the node's output ends or `timeout_s` passes: the test
        then asserts on what was printed."""
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines) and self._reader.is_alive() and \
                time.monotonic() < deadline:
            time.sleep(0.05)

    def text(self) -> str:
        self._reader.join(timeout=20)
        return "".join(self.lines)


def stop_node(process: subprocess.Popen, output: NodeOutput | None = None) -> str:
    """SIGINT, wait, and return everything the node printed (as `output` read it, if given)."""
    if process.poll() is None:
        process.send_signal(2)
    finish = process.communicate if output is None else process.wait
    try:
        finished = finish(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        finished = finish()
    printed = finished[0] if output is None else output.text()
    print(printed)  # pytest shows it beside a failing test: the node's own account
    return printed


class Harness:
    """Publishes to any topic and records the node's objects (vision_msgs and Autoware's),
    velocities and map outputs by stamp."""

    def __init__(self, context, node_name: str):
        self.node = rclpy.create_node("vexkd_test_harness", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.publishers = {}
        self.objects: dict[int, Detection3DArray] = {}
        self.arrivals: list[tuple[float, int]] = []  # (wall time, stamp) of each objects message
        self.maps: dict[str, dict[int, OccupancyGrid]] = {}
        self.objects_subscription = self.node.create_subscription(Detection3DArray, f"/{node_name}/output/objects",
                                                                  self._on_objects, 100)
        self.velocities: dict[int, PointCloud2] = {}
        self.node.create_subscription(PointCloud2, f"/{node_name}/output/objects/velocities",
                                      lambda m: self.velocities.__setitem__(stamp_to_ns(m.header.stamp), m), 100)
        self.autoware: dict[int, DetectedObjects] = {}
        self.node.create_subscription(DetectedObjects, f"/{node_name}/output/autoware/objects",
                                      lambda m: self.autoware.__setitem__(stamp_to_ns(m.header.stamp), m), 100)
        # What an RViz MarkerArray display on the node's markers shows, and the newest frame it got.
        self.shown_markers, self.markers_stamp = ros_rviz.ShownMarkers(), None
        self.node.create_subscription(MarkerArray, f"/{node_name}/output/markers", self._on_markers, 100)
        for name in ("drivable_area", "divider"):
            self.maps[name] = {}
            self.node.create_subscription(OccupancyGrid, f"/{node_name}/output/map/{name}",
                                          lambda m, n=name: self.maps[n].__setitem__(stamp_to_ns(m.header.stamp), m),
                                          100)
        self.node_name = node_name
        self.reports: list[DiagnosticStatus] = []  # its /diagnostics statuses, after watch_diagnostics()

    def _on_objects(self, msg: Detection3DArray) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self.objects[stamp] = msg
        self.arrivals.append((time.monotonic(), stamp))

    def _on_markers(self, msg: MarkerArray) -> None:
        self.shown_markers.receive(msg)
        self.markers_stamp = stamp_to_ns(msg.markers[0].header.stamp)  # the DELETEALL, always first

    def publish(self, topic: str, msg) -> None:
        self.publish_later(topic, msg)
        self.publishers[topic].publish(msg)

    def connect(self, messages: dict[str, object], timeout_s: float = 30.0) -> None:
        """Publishers for {topic: example message}, each matched with the node's subscription.

        A publisher created on first use loses its first messages while discovery matches it,
        so every input the node subscribes to is connected before anything is sent.
        """
        for topic, msg in messages.items():
            self.publish_later(topic, msg)
        self.spin_until(lambda: all(self.publishers[t].get_subscription_count() > 0 for t in messages), timeout_s,
                        f"the node to subscribe to {', '.join(messages)}")

    def publish_later(self, topic: str, msg) -> None:
        if topic not in self.publishers:
            qos = LATCHED if topic == "/tf_static" else 100
            self.publishers[topic] = self.node.create_publisher(type(msg), topic, qos)

    def spin_until(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def repeat_until(self, attempt: Callable[[], Callable[[], bool]], timeout_s: float, every_s: float,
                     what: str) -> None:
        """attempt() starts something and returns the check that it is done; attempted again
        every `every_s` until one is done, AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = attempt()
            try:
                return self.spin_until(done, min(every_s, max(deadline - time.monotonic(), 0.05)), what)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}, tried every "
                                         f"{every_s} s") from None

    def call(self, client, request, timeout_s: float, what: str, every_s: float = 5.0):
        """A service's response to `request` (an idempotent one: parameters got or set), asked
        again every `every_s` until it comes.

        service_is_ready() says the client has matched the server's request reader; the
        server may not have matched the client's response reader yet, and Fast DDS then
        drops the response ("failed to send response (timeout)"), so one call can go unanswered.
        """
        self.spin_until(client.service_is_ready, timeout_s, f"the service for {what}")
        futures = []

        def ask() -> Callable[[], bool]:
            for unanswered in futures:
                client.remove_pending_request(unanswered)
            futures[:] = [client.call_async(request)]
            return futures[0].done
        self.repeat_until(ask, timeout_s, every_s, what)
        return futures[0].result()

    def wait_until_connected(self, process: subprocess.Popen, input_topic: str, timeout_s: float = 90.0) -> None:
        """The node is up: it subscribes to its trigger input and our subscription matched its output."""
        def connected() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the node exited with {process.returncode}:\n{process.stdout.read()}")
            # Matched, not only in the graph: an answer sent before our subscription matched its
            # publisher would be lost.
            return self.node.count_subscribers(input_topic) > 0 and self.objects_subscription.get_publisher_count() > 0
        self.spin_until(connected, timeout_s, f"{self.node_name} to start")

    def answered(self, stamp_ns: int, timeout_s: float = 60.0) -> Detection3DArray:
        self.spin_until(lambda: stamp_ns in self.objects, timeout_s, f"an answer to the input stamped {stamp_ns}")
        return self.objects[stamp_ns]

    def offer_until_answered(self, topic: str, msg, stamp_ns: int, timeout_s: float = 60.0, every_s: float = 5.0,
                             together_with: Sequence[tuple[str, object]] = ()) -> Detection3DArray:
        """Publish a trigger again every `every_s` until the node answers it, each time after
        the (topic, message) pairs it needs `together_with` it (the other cameras' images and
        CameraInfo of its frame): a best-effort subscription drops what a publisher sends before
        the subscription has matched it too, though the publisher already counts it.

        A node skips work nobody subscribes to, and its output publisher may match our
        subscription a moment after ours matched it (discovery matches each side on its own),
        so a first answer can be skipped; sensor inputs are best effort with depth 1, so a copy
        may be lost; and a node that took the trigger before the messages sent just ahead of it
        (its first camera_info, say) is right to skip it. Only for triggers whose repeats the
        test does not count (a repeat replaces the held sweep or image of the same stamp).
        """
        def offer() -> Callable[[], bool]:
            for other_topic, other in together_with:
                self.publish(other_topic, other)
            if together_with:
                time.sleep(0.05)  # they reach the node ahead of the trigger
            self.publish(topic, msg)
            return lambda: stamp_ns in self.objects
        self.repeat_until(offer, timeout_s, every_s, f"an answer to the input stamped {stamp_ns}")
        return self.objects[stamp_ns]

    def watch_diagnostics(self) -> None:
        """Record the node's /diagnostics statuses in self.reports, in arrival order."""
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.reports.extend(
            s for s in m.status if s.name == f"{self.node_name}: detector"), 10)

    def offer_until_warned(self, process: subprocess.Popen, topic: str, msg, warning: str, what: str) -> None:
        """Publish a bad input (again every 5 s: sensor input is best effort, depth 1) until the
        node reports on /diagnostics that it took it, a WARN status whose last_warning says
        `warning`, or until the node exits. Needs watch_diagnostics() first.

        A WARN status covers every warning since the report before it, so the input goes out
        only once two more reports have come: the second was made after all that the inputs
        before it caused, and a WARN after it is this input's."""
        count = len(self.reports)
        self.spin_until(lambda: len(self.reports) >= count + 2, 30, "two diagnostics reports")
        after = len(self.reports)

        def said(status: DiagnosticStatus) -> bool:
            return status.level == DiagnosticStatus.WARN and \
                any(pair.key == "last_warning" and warning in pair.value for pair in status.values)

        def offer() -> Callable[[], bool]:
            self.publish(topic, msg)
            return lambda: process.poll() is not None or any(said(status) for status in self.reports[after:])
        self.repeat_until(offer, 60, 5.0, f"the node's warning about the {what}")

    def answer_to(self, topic: str, msg, stamp_ns: int,
                  together_with: Sequence[tuple[str, object]] = ()) -> Detection3DArray:
        """Publish a trigger and wait for its answer: once, or, while the node has not answered
        yet, offered until answered together with what came since the last trigger
        (offer_until_answered)."""
        if not self.objects:
            return self.offer_until_answered(topic, msg, stamp_ns, together_with=together_with)
        self.publish(topic, msg)
        return self.answered(stamp_ns)

    def boxes(self, stamp_ns: int, timeout_s: float = 60.0) -> Boxes3D:
        """The answer to `stamp_ns` as boxes, velocities from the node's velocity output."""
        answer = self.answered(stamp_ns, timeout_s)
        self.spin_until(lambda: stamp_ns in self.velocities, timeout_s, f"the velocities stamped {stamp_ns}")
        return detections_to_boxes(answer, DETECTION_CLASSES, self.velocities[stamp_ns])


def cloud(stamp_ns: int, n: int = 20000, frame: str = "LIDAR_TOP", **overrides) -> PointCloud2:
    rng = np.random.default_rng(stamp_ns % 1000)
    columns = {"x": rng.uniform(-40, 40, n).astype(np.float32), "y": rng.uniform(-40, 40, n).astype(np.float32),
               "z": rng.uniform(-2, 2, n).astype(np.float32), "intensity": rng.uniform(0, 100, n).astype(np.float32)}
    columns.update(overrides)
    return array_to_cloud(structured_points(**columns), Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame))


def static_and_pose(harness: Harness, stamps: list[int]) -> None:
    """A vehicle standing still at the origin: base_link -> LIDAR_TOP and map -> base_link at each stamp."""
    harness.publish("/tf_static", matrices_to_tf_message([("base_link", "LIDAR_TOP", np.eye(4), ns_to_stamp(0))]))
    harness.publish("/tf", matrices_to_tf_message([("map", "base_link", np.eye(4), ns_to_stamp(s)) for s in stamps]))


def node_inputs(modality: str, messages) -> dict[str, object]:
    """{topic: example} of the scene messages a node of `modality` subscribes to."""
    wanted = {"/tf", "/tf_static"}
    if modality != "camera":
        wanted.add("/LIDAR_TOP")
    if modality != "lidar":
        wanted |= {f"/{c}/image/compressed" for c in CAMERA_CHANNELS} | {f"/{c}/camera_info" for c in CAMERA_CHANNELS}
    examples = {}
    for message in messages:
        if message.topic in wanted:
            examples.setdefault(message.topic, message.msg)
    return examples


def trigger_topic(modality: str) -> str:
    return "/LIDAR_TOP" if modality != "camera" else f"/{CAMERA_CHANNELS[0]}/image/compressed"


def is_trigger(modality: str, record: dict) -> bool:
    return record["channel"] == ("LIDAR_TOP" if modality != "camera" else CAMERA_CHANNELS[0])


def feed_order(records: list[dict], modality: str) -> list[dict]:
    """Stream order, except that a key frame's trigger waits for the rest of its key frame.

    A node uses the images it holds when its trigger arrives; in a scene, cameras to the
    right fire a few ms after the LiDAR, so the trigger is published after them here to make
    the node see exactly the key frame the dataset reader sees.
    """
    ordered, held = [], {}
    key_left = {}
    for record in records:
        if record["is_key_frame"]:
            key_left[record["sample_token"]] = key_left.get(record["sample_token"], 0) + 1
    for record in records:
        token = record["sample_token"]
        if record["is_key_frame"] and is_trigger(modality, record):
            held[token] = record
        else:
            ordered.append(record)
        if record["is_key_frame"]:
            key_left[token] -= 1
            if key_left[token] == 0 and token in held:
                ordered.append(held.pop(token))
    return ordered

