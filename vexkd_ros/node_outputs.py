"""The detector node's publishers: a pipeline Result in, messages out on every output that
the settings and the model's tasks ask for."""
from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numpy as np
from autoware_internal_debug_msgs.msg import Float64Stamped
from autoware_perception_msgs.msg import DetectedObjects
from nav_msgs.msg import OccupancyGrid
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64, Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.runtime.pipeline import MODEL_STAGES, Result
from vexkd_core.runtime.settings import DetectorSettings
from vexkd_core.structures import Boxes3D

from .autoware import DETECTED_OBJECTS_LAYOUT, boxes_to_detected_objects
from .box_messages import (DETECTION3D_ARRAY_LAYOUT, MARKER_ARRAY_LAYOUT, boxes_to_detections, boxes_to_markers,
                           boxes_to_velocities)
from .cdr import check_layout, read_back
from .conversions import ns_to_stamp, probability_to_grid

OUTPUT_QOS = QoSProfile(depth=1)
OBJECTS_TOPIC = "~/output/objects"
VELOCITIES_TOPIC = "~/output/objects/velocities"
# Not lidar_centerpoint's ~/output/objects (vision_msgs is there): remap it onto
# /perception/object_recognition/detection/centerpoint/objects to stand in for lidar_centerpoint.
AUTOWARE_OBJECTS_TOPIC = "~/output/autoware/objects"
STAGES = (*MODEL_STAGES, "publish")
# Input stamp to publish time (the node's clock: ROS time, /clock under use_sim_time), stamped
# with the input's stamp so a consumer can pair it with the frame's outputs.
LATENCY_TOPIC = "~/debug/pipeline_latency_ms"
# An input stamped further than this from the node's clock is not on it (a replay on wall
# time); a live sensor's stamps are milliseconds behind it.
STAMP_CLOCK_AGREEMENT_S = 10.0
FROM_STAMP, FROM_ARRIVAL = "input stamp", "input arrival (stamps not on this node's clock)"


def check_box_messages() -> None:
    """Raise cdr.LayoutError unless this ROS install defines the box messages as the node
    writes them and its rmw reads two written boxes back as the same bytes."""
    car, pedestrian = DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")
    boxes = Boxes3D(center=np.array([[12.0, -3.0, 0.2], [6.5, 4.0, 0.1]]),
                    size_lwh=np.array([[4.5, 1.9, 1.6], [0.7, 0.6, 1.8]]), yaw=np.array([0.4, -2.0]),
                    velocity=np.array([[8.0, 1.0], [0.0, 0.0]]), label=np.array([car, pedestrian]),
                    score=np.array([0.9, 0.35]))
    header = Header(stamp=ns_to_stamp(1_533_151_603_547_590_000), frame_id="LIDAR_TOP")
    for message_class, layout, write in ((Detection3DArray, DETECTION3D_ARRAY_LAYOUT, boxes_to_detections),
                                         (DetectedObjects, DETECTED_OBJECTS_LAYOUT, boxes_to_detected_objects),
                                         (MarkerArray, MARKER_ARRAY_LAYOUT, boxes_to_markers)):
        check_layout(message_class, layout)
        read_back(write(boxes, DETECTION_CLASSES, header), message_class)


def _wanted(publisher) -> bool:
    return publisher is not None and publisher.get_subscription_count() > 0


class NodeOutputs:
    """Objects, velocities and Autoware objects (a detecting model), markers and map grids as the settings say,
    per-stage times. A parameter change swaps publishers while the worker publishes: a lock."""

    def __init__(self, node: Node, detects: bool, settings: DetectorSettings):
        """Raises cdr.LayoutError if this ROS install defines or serialises a box message
        otherwise than the node writes it (check_box_messages)."""
        if detects:
            check_box_messages()
        self._node = node
        self._lock = threading.Lock()
        self.objects = node.create_publisher(Detection3DArray, OBJECTS_TOPIC, OUTPUT_QOS) if detects else None
        self.velocities = node.create_publisher(PointCloud2, VELOCITIES_TOPIC, OUTPUT_QOS) if detects else None
        self.autoware = node.create_publisher(DetectedObjects, AUTOWARE_OBJECTS_TOPIC, OUTPUT_QOS) \
            if detects else None
        self.markers, self.maps = None, {}
        self.update(settings)
        self.stage_times = {stage: node.create_publisher(Float64, f"~/debug/processing_time_ms/{stage}", OUTPUT_QOS)
                            for stage in STAGES}
        self.total_time = node.create_publisher(Float64, "~/debug/processing_time_ms", OUTPUT_QOS)
        self.infer_part_times: dict[str, object] = {}  # part -> publisher, made as the backend names its parts
        self.latency = node.create_publisher(Float64Stamped, LATENCY_TOPIC, OUTPUT_QOS)

    def update(self, settings: DetectorSettings) -> None:
        """Markers and map grids as `settings` asks: publishers created or destroyed to match."""
        node = self._node
        with self._lock:
            if settings.publish_markers and self.markers is None:
                self.markers = node.create_publisher(MarkerArray, "~/output/markers", OUTPUT_QOS)
            elif not settings.publish_markers and self.markers is not None:
                node.destroy_publisher(self.markers)
                self.markers = None
            maps = {name: self.maps.pop(name, None) or
                    node.create_publisher(OccupancyGrid, f"~/output/map/{name}", OUTPUT_QOS)
                    for name in settings.map_classes}
            for publisher in self.maps.values():
                node.destroy_publisher(publisher)
            self.maps = maps

    def has_subscribers(self) -> bool:
        with self._lock:
            publishers = [self.objects, self.velocities, self.autoware, self.markers, *self.maps.values()]
        return any(p is not None and p.get_subscription_count() > 0 for p in publishers)

    def publish(self, result: Result, settings: DetectorSettings,
                arrived_s: float) -> tuple[dict[str, float], PipelineLatency]:
        """Every output of `result` under its stamp and frame; returns the milliseconds per stage
        and the pipeline latency."""
        started = time.perf_counter()
        header = Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)
        with self._lock:
            # A message nobody subscribes to is not built (a recorder is a subscriber, so nothing
            # recorded is lost). The box messages come serialized (cdr.py): rclpy sends the bytes.
            if result.boxes is not None:
                if _wanted(self.objects):
                    self.objects.publish(boxes_to_detections(result.boxes, DETECTION_CLASSES, header))
                if _wanted(self.velocities):
                    self.velocities.publish(boxes_to_velocities(result.boxes, header))
                if _wanted(self.autoware):
                    self.autoware.publish(boxes_to_detected_objects(result.boxes, DETECTION_CLASSES, header))
                if _wanted(self.markers):
                    shown = result.boxes.select(result.boxes.score >= settings.marker_score_threshold)
                    self.markers.publish(boxes_to_markers(shown, DETECTION_CLASSES, header))
            for name, publisher in self.maps.items():
                if name in result.maps and _wanted(publisher):  # a class added by a parameter change mid-frame
                    publisher.publish(probability_to_grid(result.maps[name], result.grid, header))
        milliseconds = {**result.stage_ms, "publish": 1e3 * (time.perf_counter() - started)}
        for stage, publisher in self.stage_times.items():
            publisher.publish(Float64(data=milliseconds[stage]))
        self.total_time.publish(Float64(data=sum(milliseconds.values())))
        for part, part_ms in result.infer_parts_ms.items():
            if part not in self.infer_part_times:
                self.infer_part_times[part] = self._node.create_publisher(
                    Float64, f"~/debug/processing_time_ms/infer/{part}", OUTPUT_QOS)
            self.infer_part_times[part].publish(Float64(data=part_ms))
        now_ns = self._node.get_clock().now().nanoseconds
        latency = pipeline_latency(now_ns, result.stamp_ns, time.monotonic() - arrived_s)
        if latency.counted_from != FROM_STAMP:
            self._node.get_logger().info(
                f"input stamps are {abs(now_ns - result.stamp_ns) * 1e-9:.3g} s from this node's clock (a bag replayed "
                f"without use_sim_time and --clock?): pipeline_latency_ms counts from each input's arrival",
                once=True)
        self.latency.publish(Float64Stamped(stamp=header.stamp, data=latency.milliseconds))
        return milliseconds, latency


class PipelineLatency(NamedTuple):
    milliseconds: float
    counted_from: str  # FROM_STAMP or FROM_ARRIVAL


def pipeline_latency(clock_now_ns: int, stamp_ns: int, since_arrival_s: float) -> PipelineLatency:
    """From the input's stamp (sensor to output, what Autoware reports) when the stamp is on
    this node's clock; from the input's arrival when it is not: a 2018 bag replayed on wall
    time would read 2.6e11 ms."""
    from_stamp_ms = (clock_now_ns - stamp_ns) * 1e-6
    if abs(from_stamp_ms) <= STAMP_CLOCK_AGREEMENT_S * 1e3:
        return PipelineLatency(from_stamp_ms, FROM_STAMP)
    return PipelineLatency(since_arrival_s * 1e3, FROM_ARRIVAL)
