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
from autoware_perception_msgs.msg import (DetectedObject, DetectedObjectKinematics, DetectedObjects,
                                          ObjectClassification, Shape)
from geometry_msgs.msg import PoseWithCovariance, Twist, TwistWithCovariance, Vector3
from std_msgs.msg import Header

from vexkd_core.structures import Boxes3D

from .box_messages import box_poses, copies, yaw_from_quaternion

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


def boxes_to_detected_objects(boxes: Boxes3D, class_names: Sequence[str], header: Header) -> DetectedObjects:
    new_object, new_kinematics = copies(DetectedObject()), copies(DetectedObjectKinematics(has_twist=True))
    new_pose, new_twist = copies(PoseWithCovariance()), copies(TwistWithCovariance())
    cos, sin = np.cos(boxes.yaw), np.sin(boxes.yaw)
    vx, vy = boxes.velocity[:, 0], boxes.velocity[:, 1]
    # The twist in the object's frame: the ground velocity rotated by -yaw.
    along, across = (cos * vx + sin * vy).tolist(), (-sin * vx + cos * vy).tolist()
    objects = []
    for i, (pose, (length, width, height), label, score) in enumerate(zip(
            box_poses(boxes), boxes.size_lwh.tolist(), boxes.label.tolist(), boxes.score.tolist())):
        autoware_label = AUTOWARE_LABELS[class_names[label]]
        kinematics = new_kinematics()
        kinematics.orientation_availability = DetectedObjectKinematics.SIGN_UNKNOWN if autoware_label in CAR_LIKE \
            else DetectedObjectKinematics.UNAVAILABLE
        kinematics.pose_with_covariance, kinematics.twist_with_covariance = new_pose(), new_twist()
        kinematics.pose_with_covariance.pose = pose
        kinematics.twist_with_covariance.twist = Twist(linear=Vector3(x=along[i], y=across[i]))
        detected = new_object()
        detected.existence_probability = score
        detected.classification = [ObjectClassification(label=autoware_label, probability=1.0)]
        detected.kinematics = kinematics
        detected.shape = Shape(type=Shape.BOUNDING_BOX, dimensions=Vector3(x=length, y=width, z=height))
        objects.append(detected)
    return DetectedObjects(header=header, objects=objects)


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
