"""Boxes3D <-> the box messages a detector node publishes: vision_msgs Detection3DArray,
the per-detection velocity cloud, RViz markers. (Autoware's DetectedObjects: autoware.py.)

The Detection3DArray and the markers carry a record per box: they are written straight to
CDR bytes (cdr.py) from numpy, which rclpy publishes as they are; tests and consumers read
them back with rclpy's deserialize_message.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker

from vexkd_core.classes import DETECTION_CLASS_COLORS
from vexkd_core.geometry import yaw_to_quaternion
from vexkd_core.structures import Boxes3D

from .cdr import HEADER, POINT, POSE, POSE_WITH_COVARIANCE, VECTOR3, CdrWriter, fragment
from .conversions import MessageError, array_to_cloud, cloud_to_array, structured_points

# A velocity marker arrow ends where the box centre will be this many seconds later.
ARROW_HORIZON_S = 1.0
# Fields of the per-object velocity cloud (see boxes_to_velocities), in this order.
VELOCITY_FIELDS = ("x", "y", "z", "vx", "vy", "vz")

# What boxes_to_detections writes (cdr.check_layout).
DETECTION3D_ARRAY_LAYOUT = {"header": HEADER, "detections": ("sequence<vision_msgs/Detection3D>", {
    "header": HEADER,
    "results": ("sequence<vision_msgs/ObjectHypothesisWithPose>", {
        "hypothesis": ("vision_msgs/ObjectHypothesis", {"class_id": "string", "score": "double"}),
        "pose": POSE_WITH_COVARIANCE}),
    "bbox": ("vision_msgs/BoundingBox3D", {"center": POSE, "size": VECTOR3}),
    "id": "string"})}


def yaw_from_quaternion(q) -> float:
    return float(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z)))


def box_poses(boxes: Boxes3D) -> np.ndarray:
    """(N, 7) each box's pose in geometry_msgs/Pose's field order: its centre x, y, z, then
    the quaternion x, y, z, w of its yaw about +z."""
    w, x, y, z = yaw_to_quaternion(boxes.yaw).reshape(-1, 4).T
    return np.column_stack([boxes.center.reshape(-1, 3), x, y, z, w])


def boxes_to_detections(boxes: Boxes3D, class_names: Sequence[str], header: Header) -> bytes:
    """A serialized Detection3DArray: one Detection3D per box under `header`, with one
    hypothesis (class name, score) whose pose is the box pose (bbox.center), no covariance
    and no id.

    vision_msgs has no velocity field: velocities go out on their own (boxes_to_velocities).
    """
    poses = box_poses(boxes)
    # Each detection's float64 fields in order: score, hypothesis pose and its covariance, bbox centre, size.
    floats = np.column_stack([boxes.score, poses, np.zeros((len(boxes), 36)), poses, boxes.size_lwh])
    detection_header = fragment(lambda w: w.header(header))
    one_hypothesis = [fragment(lambda w, name=name: (w.uint32(1), w.string(name))) for name in class_names]
    writer = CdrWriter()
    writer.header(header)
    writer.uint32(len(boxes))
    for row, label in zip(floats, boxes.label.tolist()):
        writer.fragment(detection_header)
        writer.fragment(one_hypothesis[label])
        writer.float64s(row)
        writer.string("")  # id: none (a tracker assigns them)
    return writer.bytes()


def boxes_to_velocities(boxes: Boxes3D, header: Header) -> PointCloud2:
    """Each box's velocity as one point of a PointCloud2, index-aligned with the
    Detection3DArray of the same boxes and carrying the same header.

    Fields VELOCITY_FIELDS: x, y, z the box centre (m), vx, vy, vz its velocity (m/s, vz = 0).
    The velocity is absolute (over the ground, not relative to the ego vehicle), expressed
    in the header's frame (the output frame). PointCloud2 because no standard message holds
    an array of twists: it is ROS's array of typed records by field name (radar drivers
    publish per-target velocity the same way), readable by any PointCloud2 consumer and
    shown by RViz without plugins.
    """
    velocity = np.zeros((len(boxes), 3), dtype=np.float32)
    velocity[:, :2] = boxes.velocity
    center = np.asarray(boxes.center, dtype=np.float32).reshape(-1, 3)
    columns = np.column_stack([center, velocity]).astype(np.float32)
    return array_to_cloud(structured_points(**{name: columns[:, k] for k, name in enumerate(VELOCITY_FIELDS)}),
                          header)


def velocities_from_cloud(msg: PointCloud2, count: int) -> np.ndarray:
    """(count, 2) vx, vy from boxes_to_velocities' cloud for a Detection3DArray of `count`."""
    cloud = cloud_to_array(msg, required=VELOCITY_FIELDS)
    if len(cloud) != count:
        raise MessageError(f"velocity cloud has {len(cloud)} points for {count} detections")
    return np.column_stack([cloud["vx"], cloud["vy"]]).astype(np.float64)


def detections_to_boxes(msg: Detection3DArray, class_names: Sequence[str],
                        velocities: PointCloud2 | None = None) -> Boxes3D:
    """Inverse of boxes_to_detections (best hypothesis per detection); velocity from the
    matching boxes_to_velocities cloud, zero without one."""
    if not msg.detections:
        return Boxes3D.empty()
    rows = []
    for detection in msg.detections:
        best = max(detection.results, key=lambda r: r.hypothesis.score)
        center, size = detection.bbox.center, detection.bbox.size
        rows.append(([center.position.x, center.position.y, center.position.z],
                     [size.x, size.y, size.z], yaw_from_quaternion(center.orientation),
                     class_names.index(best.hypothesis.class_id), best.hypothesis.score))
    columns = list(zip(*rows))
    velocity = np.zeros((len(rows), 2)) if velocities is None else velocities_from_cloud(velocities, len(rows))
    return Boxes3D(np.array(columns[0]), np.array(columns[1]), np.array(columns[2]),
                   velocity, np.array(columns[3], dtype=np.int64), np.array(columns[4]))


# The corners (Boxes3D.corners order) at the two ends of each of a box's 12 edges.
_EDGE_CORNERS = [0, 1, 1, 2, 2, 3, 3, 0, 4, 5, 5, 6, 6, 7, 7, 4, 0, 4, 1, 5, 2, 6, 3, 7]
_MOVING_M_S = 0.2  # a box slower than this gets no velocity arrow
# Each of the arrow head's two strokes: at most this long, and at most a third of the shaft.
_ARROW_HEAD_M, _ARROW_HEAD_SHARE, _ARROW_HEAD_ANGLE = 0.5, 1 / 3, np.radians(25.0)


def boxes_to_markers(boxes: Boxes3D, class_names: Sequence[str], header: Header,
                     namespace: str = "detections") -> bytes:
    """A serialized MarkerArray: after a DELETEALL of the last frame, per class one LINE_LIST
    of its boxes' wireframes (`<namespace>/boxes`) and one of its moving boxes' velocity
    arrows (`/velocity`: shaft from the centre to where it is ARROW_HORIZON_S later, and a
    two-stroke head), id the class index; per box a label with class and score (`/labels`,
    id the box index).

    One line list per class rather than per box: RViz makes a scene object per marker. The
    DELETEALL has an empty namespace: since Humble RViz deletes only the markers of exactly
    the namespace a DELETEALL names; an empty one clears everything this topic's display holds.
    """
    names = [class_names[label] for label in boxes.label.tolist()]
    colors = {label: np.array([*DETECTION_CLASS_COLORS.get(class_names[label], (1.0, 1.0, 1.0)), 1.0])
              for label in set(boxes.label.tolist())}
    edges = boxes.corners()[:, _EDGE_CORNERS]
    arrows = _arrow_strokes(boxes)
    moving = np.hypot(boxes.velocity[:, 0], boxes.velocity[:, 1]) > _MOVING_M_S
    line_lists = []
    for label in np.unique(boxes.label).tolist():
        of_class = boxes.label == label
        for kind, strokes, width in (("boxes", edges[of_class], 0.08), ("velocity", arrows[of_class & moving], 0.15)):
            if len(strokes):
                line_lists.append((kind, label, width, strokes.reshape(-1, 3)))
    writer = CdrWriter()
    writer.uint32(1 + len(line_lists) + len(boxes))
    marker = _MarkerWriter(writer, header)
    marker.write("", 0, Marker.ARROW, Marker.DELETEALL, _IDENTITY_POSE, np.zeros(3), np.zeros(4))
    for kind, label, width, points in line_lists:  # points in the header's frame
        marker.write(f"{namespace}/{kind}", label, Marker.LINE_LIST, Marker.ADD, _IDENTITY_POSE,
                     np.array([width, 0.0, 0.0]), colors[label], points)
    above = boxes.center + np.column_stack([np.zeros((len(boxes), 2)), boxes.size_lwh[:, 2] / 2 + 0.6])
    label_poses = np.column_stack([above, np.zeros((len(boxes), 3)), np.ones(len(boxes))])
    for i, (name, label, score, pose) in enumerate(zip(names, boxes.label.tolist(), boxes.score.tolist(), label_poses)):
        marker.write(f"{namespace}/labels", i, Marker.TEXT_VIEW_FACING, Marker.ADD, pose, _LABEL_SCALE,
                     colors[label], text=f"{name} {score:.2f}")
    return writer.bytes()


_IDENTITY_POSE = np.array([0.0, 0, 0, 0, 0, 0, 1])  # x, y, z, quaternion x, y, z, w
_LABEL_SCALE = np.array([0.0, 0.0, 0.8])  # a text marker's height is scale.z
_NO_POINTS = np.zeros((0, 3))
# What _MarkerWriter writes (cdr.check_layout).
MARKER_ARRAY_LAYOUT = {"markers": ("sequence<visualization_msgs/Marker>", {
    "header": HEADER, "ns": "string", "id": "int32", "type": "int32", "action": "int32", "pose": POSE,
    "scale": VECTOR3, "color": ("std_msgs/ColorRGBA", {"r": "float", "g": "float", "b": "float", "a": "float"}),
    "lifetime": ("builtin_interfaces/Duration", {"sec": "int32", "nanosec": "uint32"}), "frame_locked": "boolean",
    "points": ("sequence<geometry_msgs/Point>", POINT[1]), "colors": "sequence<std_msgs/ColorRGBA>",
    "texture_resource": "string",
    "texture": ("sensor_msgs/CompressedImage", {"header": HEADER, "format": "string", "data": "sequence<uint8>"}),
    "uv_coordinates": "sequence<visualization_msgs/UVCoordinate>", "text": "string", "mesh_resource": "string",
    "mesh_file": ("visualization_msgs/MeshFile", {"filename": "string", "data": "sequence<uint8>"}),
    "mesh_use_embedded_materials": "boolean"})}


class _MarkerWriter:
    """Markers of one frame into a CdrWriter: the fields they all share encoded once."""

    # lifetime 0 (forever: the next frame's DELETEALL removes them), frame_locked false
    _LIFETIME = fragment(lambda w: (w.int32(0), w.uint32(0), w.boolean(False)))
    # no per-point colours, no texture (resource, then a CompressedImage: header, format, data), no uv coordinates
    _BEFORE_TEXT = fragment(lambda w: (w.uint32(0), w.string(""), w.header(Header()), w.string(""), w.uint32(0),
                                       w.uint32(0)))
    # no mesh (resource, then a MeshFile: filename, data), mesh_use_embedded_materials false
    _AFTER_TEXT = fragment(lambda w: (w.string(""), w.string(""), w.uint32(0), w.boolean(False)))

    def __init__(self, writer: CdrWriter, header: Header):
        self._writer, self._header = writer, fragment(lambda w: w.header(header))
        self._namespaces: dict[str, bytes] = {}

    def write(self, namespace: str, marker_id: int, kind: int, action: int, pose: np.ndarray, scale: np.ndarray,
              color: np.ndarray, points: np.ndarray = _NO_POINTS, text: str = "") -> None:
        """`pose` (7,) as box_poses' rows, `scale` (3,), `color` (4,) r, g, b, a; `points` (M, 3)."""
        writer = self._writer
        writer.fragment(self._header)
        if namespace not in self._namespaces:
            self._namespaces[namespace] = fragment(lambda w: w.string(namespace))
        writer.fragment(self._namespaces[namespace])
        writer.int32(marker_id)
        writer.int32(kind)
        writer.int32(action)
        writer.float64s(np.concatenate([pose, scale]))
        writer.float32s(color)
        writer.fragment(self._LIFETIME)
        writer.uint32(len(points))
        writer.float64s(points)
        writer.fragment(self._BEFORE_TEXT)
        writer.string(text)
        writer.fragment(self._AFTER_TEXT)


def _arrow_strokes(boxes: Boxes3D) -> np.ndarray:
    """(N, 6, 3) line-list points of each box's velocity arrow: the shaft, then the head's
    two strokes back from the tip, at +-_ARROW_HEAD_ANGLE to the shaft."""
    start = boxes.center
    tip = start + np.column_stack([boxes.velocity * ARROW_HORIZON_S, np.zeros(len(boxes))])
    heading = np.arctan2(boxes.velocity[:, 1], boxes.velocity[:, 0])
    head = np.minimum(_ARROW_HEAD_M, _ARROW_HEAD_SHARE * np.linalg.norm(tip - start, axis=1))[:, None]
    strokes = [start, tip]
    for side in (1.0, -1.0):
        back = heading + np.pi + side * _ARROW_HEAD_ANGLE
        strokes += [tip, tip + head * np.column_stack([np.cos(back), np.sin(back), np.zeros(len(boxes))])]
    return np.stack(strokes, axis=1)
