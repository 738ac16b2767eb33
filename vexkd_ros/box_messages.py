"""Boxes3D <-> the box messages a detector node publishes: vision_msgs Detection3DArray,
the per-detection velocity cloud, RViz markers. (Autoware's DetectedObjects: autoware.py.)

Python builds these message by message, so this is where a frame's publishing time goes
(bench_conversions): floats are taken from numpy in one go, and many messages of one kind
are copied from a filled-in template (`copies`).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import (BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis,
                             ObjectHypothesisWithPose)
from visualization_msgs.msg import Marker, MarkerArray

from vexkd_core.classes import DETECTION_CLASS_COLORS
from vexkd_core.geometry import yaw_to_quaternion
from vexkd_core.structures import Boxes3D

from .conversions import MessageError, array_to_cloud, cloud_to_array, structured_points

# A velocity marker arrow ends where the box centre will be this many seconds later.
ARROW_HORIZON_S = 1.0
# Fields of the per-object velocity cloud (see boxes_to_velocities), in this order.
VELOCITY_FIELDS = ("x", "y", "z", "vx", "vy", "vz")


def yaw_from_quaternion(q: Quaternion) -> float:
    return float(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z)))


def box_poses(boxes: Boxes3D) -> list[Pose]:
    """Each box's pose: its centre, and its yaw as a rotation about +z. Python floats are
    taken in one go: a numpy scalar costs a conversion each."""
    rows = np.column_stack([boxes.center, yaw_to_quaternion(boxes.yaw).reshape(-1, 4)]).tolist()
    return [Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(w=w, x=qx, y=qy, z=qz))
            for x, y, z, w, qx, qy, qz in rows]


def copies(template) -> Callable[[], object]:
    """A maker of shallow copies of a filled-in message. Building many messages of one kind
    this way is several times faster: a rosidl constructor makes every default sub-message
    even when given one (a Marker's header, pose, scale, colour, texture, ...: about 60 us
    a Marker, 5 for a copy). The copies share the template's sub-messages, so a field that
    differs must be assigned a new object, never changed in place (and so must the returned
    messages' parts be, by whoever publishes them)."""
    return lambda: copy.copy(template)


def boxes_to_detections(boxes: Boxes3D, class_names: Sequence[str], header: Header) -> Detection3DArray:
    """One Detection3D per box; the hypothesis pose is the box pose (bbox.center).

    vision_msgs has no velocity field: velocities go out on their own (boxes_to_velocities).
    """
    new_detection, new_result = copies(Detection3D(header=header)), copies(ObjectHypothesisWithPose())
    new_box, new_pose = copies(BoundingBox3D()), copies(PoseWithCovariance())
    detections = []
    for pose, (length, width, height), label, score in zip(box_poses(boxes), boxes.size_lwh.tolist(),
                                                           boxes.label.tolist(), boxes.score.tolist()):
        result = new_result()
        result.hypothesis = ObjectHypothesis(class_id=class_names[label], score=score)
        result.pose = new_pose()
        result.pose.pose = pose
        box = new_box()
        box.center, box.size = pose, Vector3(x=length, y=width, z=height)
        detection = new_detection()
        detection.results, detection.bbox = [result], box
        detections.append(detection)
    return Detection3DArray(header=header, detections=detections)


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
                     namespace: str = "detections") -> MarkerArray:
    """After a DELETEALL of the last frame: per class, one LINE_LIST of its boxes' wireframes
    (`<namespace>/boxes`) and one of its moving boxes' velocity arrows (`/velocity`: shaft
    from the centre to where it is ARROW_HORIZON_S later, and a two-stroke head), id the
    class index; per box a label with class and score (`/labels`, id the box index).

    One line list per class rather than per box: RViz makes a scene object per marker, and
    building and serialising a marker is most of the cost (200 boxes as 596 markers: 39 ms to
    build and 14 to serialise in Python, bench_conversions). The DELETEALL has an empty namespace: since
    Humble RViz deletes only the markers of exactly the namespace a DELETEALL names; an
    empty one clears everything this topic's display holds.
    """
    markers = [Marker(header=header, ns="", action=Marker.DELETEALL)]
    identity = Pose()  # the line lists' points are in the header's frame
    names = [class_names[label] for label in boxes.label.tolist()]
    colors = {name: ColorRGBA(r=r, g=g, b=b, a=1.0)
              for name in set(names) for r, g, b in [DETECTION_CLASS_COLORS.get(name, (1.0, 1.0, 1.0))]}
    edges = boxes.corners()[:, _EDGE_CORNERS]
    arrows = _arrow_strokes(boxes)
    moving = np.hypot(boxes.velocity[:, 0], boxes.velocity[:, 1]) > _MOVING_M_S
    for label in np.unique(boxes.label).tolist():
        of_class = boxes.label == label
        for kind, strokes, width in (("boxes", edges[of_class], 0.08), ("velocity", arrows[of_class & moving], 0.15)):
            if len(strokes):
                markers.append(Marker(header=header, ns=f"{namespace}/{kind}", id=label,
                                      type=Marker.LINE_LIST, action=Marker.ADD, pose=identity,
                                      scale=Vector3(x=width), color=colors[class_names[label]],
                                      points=[Point(x=x, y=y, z=z) for x, y, z in strokes.reshape(-1, 3).tolist()]))
    new_label = copies(Marker(header=header, ns=f"{namespace}/labels", type=Marker.TEXT_VIEW_FACING,
                              action=Marker.ADD, scale=Vector3(z=0.8)))
    above = (boxes.center + np.column_stack([np.zeros((len(boxes), 2)), boxes.size_lwh[:, 2] / 2 + 0.6])).tolist()
    for i, (name, score, (x, y, z)) in enumerate(zip(names, boxes.score.tolist(), above)):
        label = new_label()
        label.id, label.color, label.text = i, colors[name], f"{name} {score:.2f}"
        label.pose = Pose(position=Point(x=x, y=y, z=z))
        markers.append(label)
    return MarkerArray(markers=markers)


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
