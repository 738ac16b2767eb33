"""`vexkd-ros play` / the `bag_player` node: a rosbag2 published as raw CDR with its timing.

Bytes go from the bag to the wire without deserialising, so a 4 MB image costs a memcpy.
Sensor topics use sensor-data QoS (best effort, keep last 5), /tf reliable, /tf_static
reliable + transient local so nodes started later still get the static transforms, and
ground truth (markers, grids) reliable: RViz's Marker and Map displays ask for reliable,
which a best-effort publisher cannot serve.

A bag's metadata.yaml is untrusted input: its type names only select from KNOWN_MESSAGE_CLASSES
and never name a module to import (`this/msg/PointCloud2` would import `this`). Topics of any
other type are skipped, so a bag recorded with `ros2 bag record -a` (/rosout, /parameter_events)
still plays its sensor topics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from autoware_internal_debug_msgs.msg import Float64Stamped
from autoware_perception_msgs.msg import DetectedObjects
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.exceptions import NameValidationException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader
from rclpy.validate_full_topic_name import validate_full_topic_name
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from .bag import BagError, type_name
from .conversions import ns_to_stamp
from .scene_messages import GROUND_TRUTH_PREFIX

SENSOR_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
GROUND_TRUTH_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
QOS_BY_TOPIC = {"/tf": QoSProfile(depth=100),
                "/tf_static": QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)}
WAIT_FOR_SUBSCRIBERS_S = 60.0
# Replay speed factors: at 0.01 a 20 s scene already takes over half an hour, and at 100 its
# messages (a few ms apart) come due faster than a large image can be published. Beyond these the
# delays overflow time.sleep (1e-300) or vanish (1e9, and nan or inf, which divide to 0 or nan).
MIN_RATE, MAX_RATE = 0.01, 100.0
# Every type a scene bag carries (scene_messages.scene_topics), what the detector nodes publish
# (and `vexkd-ros stack --record` records), and /clock.
KNOWN_MESSAGE_CLASSES = {type_name(message_class): message_class for message_class in (
    PointCloud2, CompressedImage, Image, CameraInfo, TFMessage, MarkerArray, OccupancyGrid, Detection3DArray,
    DetectedObjects, Float64Stamped, Float64, DiagnosticArray, Clock)}


def check_rate(rate: float) -> None:
    """BagError unless `rate` is a replay speed factor the player can keep (NaN fails both bounds)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BagError(f"--rate must be between {MIN_RATE:g} and {MAX_RATE:g}, not {rate:g}")


@dataclass(frozen=True)
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    clock: bool = False
    topics: tuple[str, ...] = ()  # empty: every topic
    wait_for: tuple[str, ...] = ()  # topics that must have a subscriber before playing starts

    def __post_init__(self) -> None:
        check_rate(self.rate)


def topic_qos(topic: str) -> QoSProfile:
    """The QoS the player offers on a bag topic."""
    if topic.startswith(GROUND_TRUTH_PREFIX):
        return GROUND_TRUTH_QOS
    return QOS_BY_TOPIC.get(topic, SENSOR_QOS)


def message_class(msgtype: str):
    """'sensor_msgs/msg/PointCloud2' -> the rclpy class, for the types in KNOWN_MESSAGE_CLASSES."""
    try:
        return KNOWN_MESSAGE_CLASSES[msgtype]
    except KeyError:
        raise BagError(f"message type {msgtype!r} is not one vexkd plays or reads") from None


def describe_topics(connections) -> str:
    """The topics and their types, "'/a' (type 'x/msg/A'), ...": repr keeps names from a hostile
    metadata.yaml (a newline, say) on one line."""
    return ", ".join(f"{c.topic!r} (type {c.msgtype!r})" for c in connections)


def _valid_topic(topic: str) -> bool:
    """Whether rclpy can publish on `topic` (a metadata.yaml may name anything)."""
    try:
        return validate_full_topic_name(topic)
    except NameValidationException:
        return False


def playable_connections(connections, topics: tuple[str, ...]) -> tuple[list, list]:
    """(connections to play, connections skipped: an unknown type or a name ROS refuses) of the bag's
    `connections`, limited to `topics` unless empty. A topic asked for by name, or a bag with
    nothing left to play, is refused instead."""
    missing = set(topics) - {c.topic for c in connections}
    if missing:
        raise BagError(f"topics not in the bag: {', '.join(sorted(missing))}")
    chosen = [c for c in connections if not topics or c.topic in topics]
    known = [c for c in chosen if c.msgtype in KNOWN_MESSAGE_CLASSES and _valid_topic(c.topic)]
    unknown = [c for c in chosen if c not in known]
    if unknown and topics:
        raise BagError(f"--topics names topics of a message type the player does not know: {describe_topics(unknown)}")
    if unknown and not known:  # (a bag without topics plays nothing, as before)
        raise BagError(f"no topic of the bag has a message type the player knows: {describe_topics(unknown)}")
    return known, unknown


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
        # Every refusal comes before the node exists, so only the reader needs closing.
        self.reader, self.options = open_bag(bag), options
        try:
            self.connections, skipped = playable_connections(self.reader.connections, options.topics)
        except BagError:
            self.reader.close()
            raise
        super().__init__("bag_player", **node_options)
        if skipped:
            self.get_logger().warning(f"skipping topics of a message type the player does not know or with a "
                                      f"name ROS refuses: {describe_topics(skipped)}")
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
