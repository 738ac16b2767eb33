"""`vexkd-ros play` / the `bag_player` node: a rosbag2 published as raw CDR with its timing.

Bytes go from the bag to the wire without deserialising, so a 4 MB image costs a memcpy.
Sensor topics use sensor-data QoS (best effort, keep last 5), /tf reliable, /tf_static
reliable + transient local so nodes started later still get the static transforms, and
ground truth (markers, grids) reliable: RViz's Marker and Map displays ask for reliable,
which a best-effort publisher cannot serve.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock

from .bag import BagError
from .conversions import ns_to_stamp
from .scene_messages import GROUND_TRUTH_PREFIX

SENSOR_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
GROUND_TRUTH_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
QOS_BY_TOPIC = {"/tf": QoSProfile(depth=100),
                "/tf_static": QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)}
WAIT_FOR_SUBSCRIBERS_S = 60.0


@dataclass(frozen=True)
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    clock: bool = False
    topics: tuple[str, ...] = ()  # empty: every topic
    wait_for: tuple[str, ...] = ()  # topics that must have a subscriber before playing starts


def topic_qos(topic: str) -> QoSProfile:
    """The QoS the player offers on a bag topic."""
    if topic.startswith(GROUND_TRUTH_PREFIX):
        return GROUND_TRUTH_QOS
    return QOS_BY_TOPIC.get(topic, SENSOR_QOS)


def message_class(type_name: str):
    """'sensor_msgs/msg/PointCloud2' -> the rclpy class."""
    package, _, name = type_name.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {type_name} is not available in this ROS environment") from None


def open_bag(path: Path) -> Reader:
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():  # rosbags would name the folder as the file
        raise BagError(f"no metadata.yaml in {path}: not a rosbag2 folder")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # rosbags raises several types for a folder that is not a bag
        raise BagError(f"{path} is not a readable rosbag2: {error}") from None
    return reader


class BagPlayer(Node):
    def __init__(self, bag: Path, options: PlayOptions, **node_options):
        if options.rate <= 0:
            raise BagError(f"--rate must be positive, not {options.rate}")
        self.reader, self.options = open_bag(bag), options  # before the node exists: nothing to clean up
        super().__init__("bag_player", **node_options)
        unknown = set(options.topics) - {c.topic for c in self.reader.connections}
        if unknown:
            raise BagError(f"topics not in the bag: {', '.join(sorted(unknown))}")
        self.connections = [c for c in self.reader.connections if not options.topics or c.topic in options.topics]
        self.publishers_by_topic = {
            c.topic: self.create_publisher(message_class(c.msgtype), c.topic, topic_qos(c.topic))
            for c in self.connections}
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if options.clock else None
        self.published = 0

    def wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + WAIT_FOR_SUBSCRIBERS_S
        for topic in self.options.wait_for:
            while self.count_subscribers(topic) == 0:
                if time.monotonic() > deadline:
                    raise BagError(f"nobody subscribed to {topic} within {WAIT_FOR_SUBSCRIBERS_S:.0f} s")
                time.sleep(0.05)

    def play(self, stop=lambda: False) -> int:
        """Publish until the bag ends (or forever with loop) or `stop()` is true; returns messages published."""
        self.wait_for_subscribers()
        while True:
            self._play_once(stop)
            if not self.options.loop or stop():
                return self.published

    def _play_once(self, stop) -> None:
        started_wall, first_ns = time.monotonic(), None
        for connection, stamp_ns, data in self.reader.messages(connections=self.connections):
            if stop():
                return
            first_ns = stamp_ns if first_ns is None else first_ns
            delay = started_wall + (stamp_ns - first_ns) * 1e-9 / self.options.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.clock_pub is not None:
                self.clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))
            self.publishers_by_topic[connection.topic].publish(bytes(data))
            self.published += 1

    def destroy_node(self) -> None:
        self.reader.close()
        super().destroy_node()
