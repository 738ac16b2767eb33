"""Boxes <-> autoware_perception_msgs/DetectedObjects, the message Autoware's perception stack
reads from `lidar_centerpoint`, so a detector node can stand in for it with a remap.

Filled as lidar_centerpoint fills it: existence_probability = score, one classification
with probability 1, car-like labels with orientation SIGN_UNKNOWN, a BOUNDING_BOX shape
(dimensions x = length, y = width, z = height), no covariances. The twist is the box's
velocity over the ground rotated into the object's own frame (linear.x along its heading,
linear.y to its left), where Autoware's trackers read it; lidar_centerpoint puts the speed
in linear.x and a heading correction in angular.z instead, we keep both components and
publish no yaw rate (the model predicts none).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from autoware_perception_msgs.msg import DetectedObjectKinematics, DetectedObjects, ObjectClassification, Shape
from std_msgs.msg import Header

from vexkd_core.structures import Boxes3D

from .box_messages import box_poses, yaw_from_quaternion
from .cdr import HEADER, POSE_WITH_COVARIANCE, TWIST_WITH_COVARIANCE, VECTOR3, CdrWriter, fragment

# nuScenes' 10 detection classes as Autoware labels; Autoware has no barrier or cone class.
AUTOWARE_LABELS = {
    "car": ObjectClassification.CAR, "truck": ObjectClassification.TRUCK,
    "construction_vehicle": ObjectClassification.TRUCK, "bus": ObjectClassification.BUS,
    "trailer": ObjectClassification.TRAILER, "barrier": ObjectClassification.UNKNOWN,
    "motorcycle": ObjectClassification.MOTORCYCLE, "bicycle": ObjectClassification.BICYCLE,
    "pedestrian": ObjectClassification.PEDESTRIAN, "traffic_cone": ObjectClassification.UNKNOWN,
}
# lidar_centerpoint's isCarLikeVehicleLabel: their heading is known only up to a sign flip.
CAR_LIKE = {ObjectClassification.CAR, ObjectClassification.TRUCK, ObjectClassification.BUS,
            ObjectClassification.TRAILER}
# What boxes_to_detected_objects writes (cdr.check_layout).
DETECTED_OBJECTS_LAYOUT = {"header": HEADER, "objects": ("sequence<autoware_perception_msgs/DetectedObject>", {
    "existence_probability": "float",
    "classification": ("sequence<autoware_perception_msgs/ObjectClassification>",
                       {"label": "uint8", "probability": "float"}),
    "kinematics": ("autoware_perception_msgs/DetectedObjectKinematics", {
        "pose_with_covariance": POSE_WITH_COVARIANCE, "has_position_covariance": "boolean",
        "orientation_availability": "uint8", "twist_with_covariance": TWIST_WITH_COVARIANCE,
        "has_twist": "boolean", "has_twist_covariance": "boolean"}),
    "shape": ("autoware_perception_msgs/Shape", {
        "type": "uint8", "footprint": ("geometry_msgs/Polygon", {"points": "sequence<geometry_msgs/Point32>"}),
        "dimensions": VECTOR3})})}


def boxes_to_detected_objects(boxes: Boxes3D, class_names: Sequence[str], header: Header) -> bytes:
    """A serialized DetectedObjects, one DetectedObject per box."""
    n = len(boxes)
    cos, sin = np.cos(boxes.yaw), np.sin(boxes.yaw)
    vx, vy = boxes.velocity[:, 0], boxes.velocity[:, 1]
    # The twist in the object's frame: the ground velocity rotated by -yaw; no yaw rate.
    twist = np.column_stack([cos * vx + sin * vy, -sin * vx + cos * vy, np.zeros((n, 4))])
    # Each object's float64 runs: its pose and (zero) covariance; its twist and covariance; its dimensions.
    poses = np.column_stack([box_poses(boxes), np.zeros((n, 36))])
    twists = np.column_stack([twist, np.zeros((n, 36))])
    # Per class: its one classification (Autoware label, probability 1) and its orientation availability.
    classified = {label: (fragment(lambda w, c=AUTOWARE_LABELS[name]: (w.uint32(1), w.uint8(c), w.float32(1.0))),
                          DetectedObjectKinematics.SIGN_UNKNOWN if AUTOWARE_LABELS[name] in CAR_LIKE
                          else DetectedObjectKinematics.UNAVAILABLE)
                  for label, name in enumerate(class_names)}
    writer = CdrWriter()
    writer.header(header)
    writer.uint32(n)
    for score, label, pose, moving, size in zip(boxes.score.tolist(), boxes.label.tolist(), poses, twists,
                                                 boxes.size_lwh):
        classification, orientation = classified[label]
        writer.float32(score)
        writer.fragment(classification)
        writer.float64s(pose)
        writer.boolean(False)  # has_position_covariance
        writer.uint8(orientation)
        writer.float64s(moving)
        writer.boolean(True)  # has_twist
        writer.boolean(False)  # has_twist_covariance
        writer.uint8(Shape.BOUNDING_BOX)
        writer.uint32(0)  # footprint: none for a box
        writer.float64s(size)  # dimensions: x length, y width, z height
    return writer.bytes()


def detected_objects_to_boxes(msg: DetectedObjects) -> tuple[Boxes3D, np.ndarray]:
    """(boxes with their ground velocity, Autoware labels): the inverse as far as labels allow."""
    if not msg.objects:
        return Boxes3D.empty(), np.zeros(0, np.uint8)
    center, size, yaw, velocity, score, labels = [], [], [], [], [], []
    for obj in msg.objects:
        pose, twist = obj.kinematics.pose_with_covariance.pose, obj.kinematics.twist_with_covariance.twist
        heading = yaw_from_quaternion(pose.orientation)
        c, s = np.cos(heading), np.sin(heading)
        center.append([pose.position.x, pose.position.y, pose.position.z])
        size.append([obj.shape.dimensions.x, obj.shape.dimensions.y, obj.shape.dimensions.z])
        yaw.append(heading)
        velocity.append([c * twist.linear.x - s * twist.linear.y, s * twist.linear.x + c * twist.linear.y])
        score.append(obj.existence_probability)
        labels.append(obj.classification[0].label)
    boxes = Boxes3D(np.array(center), np.array(size), np.array(yaw), np.array(velocity),
                    np.zeros(len(center), np.int64), np.array(score))
    return boxes, np.array(labels, np.uint8)
