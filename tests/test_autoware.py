"""The Autoware output read as Autoware reads it: real autoware_perception_msgs classes
(built from interfaces/ where ROS lacks them), labels mapped, twist in the object's frame."""
import numpy as np
import pytest
from autoware_perception_msgs.msg import DetectedObjectKinematics, DetectedObjects, ObjectClassification, Shape

from tests.support import ros_samples
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.structures import Boxes3D
from vexkd_ros.autoware import AUTOWARE_LABELS, boxes_to_detected_objects, detected_objects_to_boxes
from vexkd_ros.cdr import read_back

pytestmark = pytest.mark.unit


def test_every_class_has_an_autoware_label():
    assert set(AUTOWARE_LABELS) == set(DETECTION_CLASSES)
    assert AUTOWARE_LABELS["construction_vehicle"] == ObjectClassification.TRUCK
    assert AUTOWARE_LABELS["barrier"] == AUTOWARE_LABELS["traffic_cone"] == ObjectClassification.UNKNOWN


def test_boxes_survive_the_wire_as_detected_objects():
    boxes = ros_samples.boxes(seed=4, n=12)
    msg = read_back(boxes_to_detected_objects(boxes, DETECTION_CLASSES, ros_samples.header()),
                                DetectedObjects)
    assert msg.header.frame_id == "LIDAR_TOP" and len(msg.objects) == 12
    back, labels = detected_objects_to_boxes(msg)
    np.testing.assert_allclose(back.center, boxes.center, atol=1e-9)
    np.testing.assert_allclose(back.size_lwh, boxes.size_lwh, atol=1e-9)
    np.testing.assert_allclose(np.cos(back.yaw - boxes.yaw), 1.0, atol=1e-9)
    np.testing.assert_allclose(back.velocity, boxes.velocity, atol=1e-9)
    np.testing.assert_allclose(back.score, boxes.score, atol=1e-6)  # float32 on the wire
    assert labels.tolist() == [AUTOWARE_LABELS[DETECTION_CLASSES[k]] for k in boxes.label]
    for obj in msg.objects:
        assert obj.shape.type == Shape.BOUNDING_BOX and obj.kinematics.has_twist
        assert len(obj.classification) == 1 and obj.classification[0].probability == 1.0


def test_the_twist_is_in_the_objects_frame():
    """A car heading +y (yaw 90 deg) driving 5 m/s along +y over the ground, sliding 1 m/s to -x."""
    boxes = Boxes3D(np.array([[10.0, 0.0, 0.0]]), np.array([[4.5, 1.9, 1.6]]), np.array([np.pi / 2]),
                    np.array([[-1.0, 5.0]]), np.array([DETECTION_CLASSES.index("car")]), np.array([0.9]))
    obj = read_back(boxes_to_detected_objects(boxes, DETECTION_CLASSES, ros_samples.header()),
                                DetectedObjects).objects[0]
    twist = obj.kinematics.twist_with_covariance.twist
    np.testing.assert_allclose([twist.linear.x, twist.linear.y, twist.angular.z], [5.0, 1.0, 0.0], atol=1e-12)
    assert obj.kinematics.orientation_availability == DetectedObjectKinematics.SIGN_UNKNOWN
    assert obj.existence_probability == np.float32(0.9)  # float32 on the wire
