"""What RViz does with what we send it, for tests without RViz: its marker semantics and
the QoS and properties a display config asks for (read from rviz2's sources, Jazzy)."""
from __future__ import annotations

from pathlib import Path

import yaml
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from visualization_msgs.msg import Marker, MarkerArray

RVIZ_CONFIG = Path(__file__).resolve().parents[2] / "rviz" / "vexkd.rviz"

# Properties rviz_default_plugins/Image has (ImageDisplay + the common display ones): there is
# no transport property, the transport is the topic name's last part (get_transport_from_topic.cpp).
IMAGE_DISPLAY_PROPERTIES = {"Class", "Name", "Enabled", "Value", "Topic", "Normalize Range", "Min Value",
                            "Max Value", "Median window"}
TOPIC_PROPERTIES = {"Value", "Depth", "History Policy", "Reliability Policy", "Durability Policy"}
IMAGE_TRANSPORTS = {"compressed", "compressedDepth", "theora"}  # any other last part means raw
# PointCloudCommon::updateStyle: the Points style draws pixels and hides "Size (m)"; every
# other style (Squares, Flat Squares, Spheres, Boxes) uses "Size (m)" and hides "Size (Pixels)".
POINT_CLOUD_STYLES = {"Points", "Squares", "Flat Squares", "Spheres", "Boxes"}

_RELIABILITY = {"Reliable": ReliabilityPolicy.RELIABLE, "Best Effort": ReliabilityPolicy.BEST_EFFORT,
                "System Default": ReliabilityPolicy.SYSTEM_DEFAULT}
_DURABILITY = {"Volatile": DurabilityPolicy.VOLATILE, "Transient Local": DurabilityPolicy.TRANSIENT_LOCAL,
               "System Default": DurabilityPolicy.SYSTEM_DEFAULT}
_HISTORY = {"Keep Last": HistoryPolicy.KEEP_LAST, "Keep All": HistoryPolicy.KEEP_ALL,
            "System Default": HistoryPolicy.SYSTEM_DEFAULT}


class ShownMarkers:
    """The markers one MarkerArray display shows, by (ns, id), after each message.

    As rviz_default_plugins' MarkerCommon::processMessage: ADD replaces (ns, id), DELETE
    removes it, DELETEALL with an empty ns removes everything, with a ns only that exact ns.
    Markers here have lifetime 0: they stay until deleted.
    """

    def __init__(self):
        self.shown: dict[tuple[str, int], Marker] = {}

    def receive(self, array: MarkerArray) -> None:
        for marker in array.markers:
            if marker.action == Marker.ADD:
                self.shown[(marker.ns, marker.id)] = marker
            elif marker.action == Marker.DELETE:
                self.shown.pop((marker.ns, marker.id), None)
            elif marker.action == Marker.DELETEALL:
                self.shown = {key: m for key, m in self.shown.items() if marker.ns and key[0] != marker.ns}


def added(array: MarkerArray) -> set[tuple[str, int]]:
    return {(m.ns, m.id) for m in array.markers if m.action == Marker.ADD}


def displays() -> list[dict]:
    return yaml.safe_load(RVIZ_CONFIG.read_text())["Visualization Manager"]["Displays"]


def requested_qos(display: dict) -> QoSProfile:
    """The subscription QoS a display's Topic property asks for."""
    topic = display["Topic"]
    return QoSProfile(depth=int(topic.get("Depth", 5)),
                      history=_HISTORY[topic.get("History Policy", "Keep Last")],
                      reliability=_RELIABILITY[topic.get("Reliability Policy", "Reliable")],
                      durability=_DURABILITY[topic.get("Durability Policy", "Volatile")])


def point_size_property(style: str) -> str:
    """The size property a PointCloud2 display of `style` draws with (its default style is Flat Squares)."""
    assert style in POINT_CLOUD_STYLES, style
    return "Size (Pixels)" if style == "Points" else "Size (m)"


def image_transport(topic: str) -> str:
    """The transport RViz's Image display subscribes with for `topic`."""
    last = topic.rsplit("/", 1)[-1]
    return last if last in IMAGE_TRANSPORTS else "raw"
