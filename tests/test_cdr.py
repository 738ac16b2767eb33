"""The box messages the nodes send as bytes they wrote themselves (vexkd_ros.cdr): read with
rclpy's own deserializer, they hold the boxes, and they are the bytes rclpy writes."""
import numpy as np
import pytest
from autoware_perception_msgs.msg import DetectedObjects
from builtin_interfaces.msg import Time
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from tests.support import ros_samples
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_ros import box_messages
from vexkd_ros.autoware import boxes_to_detected_objects, detected_objects_to_boxes
from vexkd_ros.cdr import LayoutError, check_layout, read_back
from vexkd_ros.node_outputs import check_box_messages

pytestmark = pytest.mark.unit

# Frame ids of every length mod 4 and 8: the strings shift the alignment of all that follows.
FRAMES = ["", "a", "ab", "abc", "LIDAR_TOP", "CAM_FRONT_LEFT"]


@pytest.mark.parametrize("count", [0, 1, 3, 200])
def test_box_messages_are_the_bytes_rclpy_writes_and_hold_the_boxes(count):
    boxes = ros_samples.boxes(seed=count, n=count)
    boxes.label[:] = np.arange(count) % len(DETECTION_CLASSES)  # every class name's length
    boxes.velocity[::2] = 0.0  # moving and standing boxes: velocity line lists of some classes only
    for k, frame in enumerate(FRAMES):
        header = Header(stamp=Time(sec=1_533_151_603 + k, nanosec=547_590_000 + k), frame_id=frame)
        detections = read_back(box_messages.boxes_to_detections(boxes, DETECTION_CLASSES, header),
                                           Detection3DArray)
        assert detections.header == header and len(detections.detections) == count
        assert all(d.header == header and d.id == "" and len(d.results) == 1 for d in detections.detections)
        assert all(not any(d.results[0].pose.covariance) for d in detections.detections)
        back = box_messages.detections_to_boxes(detections, DETECTION_CLASSES)
        for name in ("center", "size_lwh", "score", "label"):
            np.testing.assert_array_equal(getattr(back, name), getattr(boxes, name))
        np.testing.assert_allclose(np.cos(back.yaw - boxes.yaw), 1.0, atol=1e-12)

        objects = read_back(boxes_to_detected_objects(boxes, DETECTION_CLASSES, header), DetectedObjects)
        assert objects.header == header
        back, _ = detected_objects_to_boxes(objects)
        np.testing.assert_allclose(back.velocity, boxes.velocity, atol=1e-9)
        np.testing.assert_array_equal(back.center, boxes.center)

        markers = read_back(box_messages.boxes_to_markers(boxes, DETECTION_CLASSES, header),
                                        MarkerArray).markers
        assert markers[0].action == Marker.DELETEALL and all(m.header == header for m in markers)
        texts = [m.text for m in markers if m.type == Marker.TEXT_VIEW_FACING]
        assert texts == [f"{DETECTION_CLASSES[label]} {score:.2f}" for label, score in zip(boxes.label, boxes.score)]
        wires = [m for m in markers if m.ns == "detections/boxes"]
        assert sum(len(m.points) for m in wires) == 24 * count


def test_the_layouts_match_this_installs_messages_and_a_difference_is_named():
    check_box_messages()  # what a detecting node runs at start: layouts, and this rmw reads the bytes back
    # A distro whose ObjectHypothesis carried a float32 score (or lacked a field) is refused.
    detection = dict(box_messages.DETECTION3D_ARRAY_LAYOUT["detections"][1])
    detection["results"] = ("sequence<vision_msgs/ObjectHypothesisWithPose>", {
        "hypothesis": ("vision_msgs/ObjectHypothesis", {"class_id": "string", "score": "float"}),
        "pose": detection["results"][1]["pose"]})
    changed = {**box_messages.DETECTION3D_ARRAY_LAYOUT, "detections": ("sequence<vision_msgs/Detection3D>", detection)}
    with pytest.raises(LayoutError, match="vision_msgs/ObjectHypothesis on this ROS install has fields"):
        check_layout(Detection3DArray, changed)
    without_id = {**box_messages.DETECTION3D_ARRAY_LAYOUT["detections"][1]}
    del without_id["id"]
    with pytest.raises(LayoutError, match="vision_msgs/Detection3D on this ROS install"):
        check_layout(Detection3DArray, {**box_messages.DETECTION3D_ARRAY_LAYOUT,
                                        "detections": ("sequence<vision_msgs/Detection3D>", without_id)})


def test_bytes_this_rmw_would_write_otherwise_are_refused():
    """Read back, a message must come out as the same bytes but for zero padding: garbage in
    padding (or a misplaced field) and bytes the rmw cannot read are LayoutErrors."""
    data = bytearray(box_messages.boxes_to_detections(ros_samples.boxes(n=2), DETECTION_CLASSES,
                                                      Header(frame_id="a")))
    read_back(bytes(data), Detection3DArray)
    # Encapsulation (4), stamp (8), frame_id's length (4), "a\0" (2): two bytes of padding follow.
    assert data[18:20] == b"\0\0"
    data[18] = 0x5A
    with pytest.raises(LayoutError, match="serialises it otherwise than the node writes it"):
        read_back(bytes(data), Detection3DArray)
    with pytest.raises(LayoutError, match="cannot read the bytes the node writes"):
        read_back(bytes(data[:100]), Detection3DArray)
