"""Conversions between ROS messages and numpy: round trips, layouts, and clear refusals."""
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from tests.support import ros_rviz, ros_samples
from vexkd_core.classes import DETECTION_CLASS_COLORS, DETECTION_CLASSES
from vexkd_ros import box_messages
from vexkd_ros import conversions as conv
from vexkd_ros.cdr import read_back
from vexkd_ros.conversions import MessageError

pytestmark = pytest.mark.unit


def raw_cloud(fields, point_step, rows, row_step=None, bigendian=False) -> PointCloud2:
    """A cloud from hand-packed rows: `rows` is a list of bytes, one per row."""
    width = len(rows[0]) // point_step
    return PointCloud2(height=len(rows), width=width, fields=fields, is_bigendian=bigendian,
                       point_step=point_step, row_step=row_step or width * point_step,
                       data=b"".join(rows))


def field(name, offset, datatype=PointField.FLOAT32):
    return PointField(name=name, offset=offset, datatype=datatype, count=1)


def test_cloud_round_trip_keeps_every_field_and_dtype():
    sent = ros_samples.cloud_columns(seed=1)
    back = conv.cloud_to_array(conv.array_to_cloud(sent, ros_samples.header()))
    assert back.dtype.names == sent.dtype.names
    for name in sent.dtype.names:
        assert back[name].dtype == sent[name].dtype
        np.testing.assert_array_equal(back[name], sent[name])


def test_cloud_read_is_a_view_on_the_message_buffer():
    msg = conv.array_to_cloud(ros_samples.cloud_columns(seed=1), ros_samples.header())
    cloud = conv.cloud_to_array(msg)
    assert np.shares_memory(cloud, np.frombuffer(msg.data, dtype=np.uint8))


def test_fields_are_found_by_name_with_any_order_padding_and_extras():
    # Layout: intensity(f64) @0, pad, z @12, ring(u16) @16, y @20, x @24, pad to 32 bytes.
    dtype = np.dtype({"names": ["intensity", "z", "ring", "y", "x"],
                      "formats": ["<f8", "<f4", "<u2", "<f4", "<f4"],
                      "offsets": [0, 12, 16, 20, 24], "itemsize": 32})
    points = np.zeros(3, dtype=dtype)
    points["x"], points["y"], points["z"] = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    points["intensity"], points["ring"] = [10, 20, 30], [0, 1, 31]
    fields = [field("intensity", 0, PointField.FLOAT64), field("z", 12),
              field("ring", 16, PointField.UINT16), field("y", 20), field("x", 24)]
    xyzi = conv.cloud_to_points(raw_cloud(fields, 32, [points.tobytes()]), optional=("ring", "time"))
    np.testing.assert_array_equal(xyzi, [[1, 4, 7, 10, 0, 0], [2, 5, 8, 20, 1, 0], [3, 6, 9, 30, 31, 0]])


def test_row_padding_is_skipped():
    row = lambda values: np.asarray(values, "<f4").tobytes() + b"\xff" * 8  # noqa: E731
    fields = [field(n, 4 * i) for i, n in enumerate("x y z intensity".split())]
    msg = raw_cloud(fields, 16, [row([1, 2, 3, 4, 5, 6, 7, 8]), row([9, 10, 11, 12, 13, 14, 15, 16])],
                    row_step=40)
    msg.width = 2
    np.testing.assert_array_equal(conv.cloud_to_points(msg, optional=())[:, 0], [1, 5, 9, 13])


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "intensity"]), "lacks field"),
    (lambda m: setattr(m, "is_bigendian", True), "big-endian"),
    (lambda m: m.fields[0].__setattr__("datatype", PointField.UINT8), "expected float32"),
    (lambda m: m.fields[0].__setattr__("datatype", 42), "unknown datatype"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-5]), "bytes, header says"),
    (lambda m: setattr(m, "point_step", 8), "beyond point_step"),
    (lambda m: m.fields.append(PointField(name="x", offset=4, datatype=PointField.FLOAT32, count=1)),
     "duplicate field name"),
])
def test_malformed_clouds_are_refused_clearly(mutate, message):
    msg = conv.array_to_cloud(ros_samples.cloud_columns(seed=2, n=10), ros_samples.header())
    mutate(msg)
    with pytest.raises(MessageError, match=message):
        conv.cloud_to_array(msg)


def test_empty_cloud_gives_no_points():
    msg = conv.array_to_cloud(ros_samples.cloud_columns(n=0), ros_samples.header())
    assert conv.cloud_to_points(msg).shape == (0, 5)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_round_trip(encoding):
    rgb = ros_samples.rgb_image(seed=4, height=9, width=13)
    msg = conv.rgb_to_image(rgb, ros_samples.header("CAM_FRONT"), encoding)
    assert msg.encoding == encoding
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


def test_bgr_bytes_are_swapped_and_row_padding_and_mono_handled():
    bgr_row = bytes([10, 20, 30, 40, 50, 60]) + b"\x00\x00"  # 2 px + 2 bytes padding
    msg = Image(height=2, width=2, encoding="bgr8", step=8, data=bgr_row * 2)
    np.testing.assert_array_equal(conv.image_to_rgb(msg)[1], [[30, 20, 10], [60, 50, 40]])
    mono = Image(height=1, width=3, encoding="mono8", step=3, data=bytes([1, 2, 3]))
    np.testing.assert_array_equal(conv.image_to_rgb(mono)[0], [[1, 1, 1], [2, 2, 2], [3, 3, 3]])


@pytest.mark.parametrize("encoding, order", [("rgba8", [0, 1, 2]), ("bgra8", [2, 1, 0])])
def test_four_channel_images_drop_alpha(encoding, order):
    pixel = [11, 22, 33, 44]
    msg = Image(height=1, width=2, encoding=encoding, step=8, data=bytes(pixel * 2))
    np.testing.assert_array_equal(conv.image_to_rgb(msg)[0, 1], np.array(pixel)[order])


@pytest.mark.parametrize("msg, message", [
    (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "encoding '16UC1'"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(7)), "bytes, header says"),
    (Image(height=2, width=4, encoding="rgb8", step=6, data=bytes(12)), "step 6 < width"),
    (Image(height=0, width=0, encoding="rgb8", step=0, data=b""), "empty"),
])
def test_malformed_images_are_refused_clearly(msg, message):
    with pytest.raises(MessageError, match=message):
        conv.image_to_rgb(msg)


def test_compressed_png_is_lossless_and_jpeg_is_close():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = [200, 30, 30]
    rgb[:, 32:] = [20, 40, 220]
    header = ros_samples.header("CAM_FRONT")
    np.testing.assert_array_equal(conv.compressed_to_rgb(conv.rgb_to_compressed(rgb, header, "png")), rgb)
    jpeg = conv.compressed_to_rgb(conv.rgb_to_compressed(rgb, header, "jpeg", jpeg_quality=95))
    assert np.abs(jpeg.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 definitely not a jpeg"])
def test_corrupt_compressed_image_is_refused(data):
    with pytest.raises(MessageError):
        conv.compressed_to_rgb(CompressedImage(format="jpeg", data=data))


K = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])


def test_camera_info_round_trip_and_zero_matrix_refused():
    info = conv.intrinsics_to_camera_info(K, 1600, 900, ros_samples.header("CAM_FRONT"))
    np.testing.assert_array_equal(conv.camera_info_to_intrinsics(info), K)
    with pytest.raises(MessageError, match="focal length"):
        conv.camera_info_to_intrinsics(CameraInfo())


@pytest.mark.parametrize("row", [[0, 0, 0], [0, 0, -1], [0.1, 0, 1], [0, 0, np.inf]])
def test_camera_info_that_the_model_cannot_invert_is_refused(row):
    k = K.copy()
    k[2] = row
    with pytest.raises(MessageError):
        conv.camera_info_to_intrinsics(conv.intrinsics_to_camera_info(k, 1600, 900, ros_samples.header()))


def test_camera_info_with_a_projective_scale_is_normalised():
    info = conv.intrinsics_to_camera_info(2 * K, 1600, 900, ros_samples.header())
    np.testing.assert_allclose(conv.camera_info_to_intrinsics(info), K, rtol=1e-15)


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_encoded_image_size_is_read_from_the_header(extension):
    encoded = cv2.imencode(extension, np.zeros((37, 53, 3), np.uint8))[1].tobytes()
    assert conv.encoded_image_size(encoded) == (53, 37)
    assert conv.encoded_image_size(ros_samples.forged_jpeg(20000, 20000)) == (20000, 20000)
    assert conv.encoded_image_size(b"\xff\xd8 not a jpeg") is None


def test_a_jpeg_claiming_a_huge_size_is_refused_before_decoding():
    msg = conv.encoded_to_compressed(ros_samples.forged_jpeg(20000, 20000), ros_samples.header("CAM_FRONT"))
    started = time.perf_counter()
    with pytest.raises(MessageError, match="20000x20000"):
        conv.compressed_to_rgb(msg)
    assert time.perf_counter() - started < 0.5  # cv2 spends ~10 s filling 1.2 GB of pixels


def test_hypothesis_pose_is_the_box_pose_and_velocity_has_its_own_message():
    boxes = ros_samples.boxes(seed=5, n=7)
    msg = read_back(box_messages.boxes_to_detections(boxes, DETECTION_CLASSES, ros_samples.header()),
                                Detection3DArray)
    assert len(msg.detections) == 7 and msg.detections[0].header.frame_id == "LIDAR_TOP"
    assert msg.detections[2].results[0].hypothesis.class_id == DETECTION_CLASSES[boxes.label[2]]
    assert msg.detections[2].bbox.size.x == pytest.approx(boxes.size_lwh[2, 0])
    for detection in msg.detections:
        assert detection.results[0].pose.pose == detection.bbox.center
    velocities = box_messages.boxes_to_velocities(boxes, ros_samples.header())
    assert velocities.header == msg.header
    # One point per detection, in the same order.
    cloud = conv.cloud_to_array(velocities, required=box_messages.VELOCITY_FIELDS)
    assert cloud.dtype.names == box_messages.VELOCITY_FIELDS and len(cloud) == 7
    np.testing.assert_allclose(np.column_stack([cloud["vx"], cloud["vy"]]), boxes.velocity, rtol=1e-6)
    np.testing.assert_allclose(np.column_stack([cloud["x"], cloud["y"], cloud["z"]]), boxes.center, rtol=1e-6)
    assert (cloud["vz"] == 0).all()
    back = box_messages.detections_to_boxes(msg, DETECTION_CLASSES, velocities)
    np.testing.assert_allclose(back.velocity, boxes.velocity, rtol=1e-6)
    for name in ("center", "size_lwh", "score"):
        np.testing.assert_allclose(getattr(back, name), getattr(boxes, name), atol=1e-9)
    np.testing.assert_allclose(np.cos(back.yaw - boxes.yaw), 1.0, atol=1e-12)
    np.testing.assert_array_equal(back.label, boxes.label)


def test_rviz_shows_only_the_newest_frames_markers():
    """8 boxes, then 2: RViz must show the 2 boxes' wireframes, labels and arrows, nothing more."""
    display = ros_rviz.ShownMarkers()
    for n in (8, 2):
        boxes = ros_samples.boxes(seed=n, n=n)
        boxes.velocity[:] = 3.0  # every box moves: each has an arrow too
        frame = read_back(box_messages.boxes_to_markers(boxes, DETECTION_CLASSES, ros_samples.header()),
                                      MarkerArray)
        display.receive(frame)
        assert set(display.shown) == ros_rviz.added(frame)
        shown = list(display.shown.values())
        assert sum(m.type == Marker.TEXT_VIEW_FACING for m in shown) == n
        # Line lists draw a segment per pair of points: 12 edges a box, shaft + 2 head strokes an arrow.
        for kind, segments in (("boxes", 12), ("velocity", 3)):
            lines = [m for m in shown if m.ns == f"detections/{kind}"]
            assert {m.type for m in lines} == {Marker.LINE_LIST}
            assert sum(len(m.points) for m in lines) == 2 * segments * n
    display.receive(read_back(box_messages.boxes_to_markers(ros_samples.boxes(n=0), DETECTION_CLASSES,
                                                                        ros_samples.header()), MarkerArray))
    assert display.shown == {}


def test_markers_clear_then_draw_each_box_in_its_class_colour():
    boxes = ros_samples.boxes(seed=6, n=5)
    boxes.label[:] = [0, 8, 0, 1, 8]  # two cars, two pedestrians, a truck
    boxes.velocity[:] = [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, -2.0]]
    markers = read_back(box_messages.boxes_to_markers(boxes, DETECTION_CLASSES, ros_samples.header()),
                                    MarkerArray).markers
    assert markers[0].action == Marker.DELETEALL
    wires = {m.id: m for m in markers if m.ns == "detections/boxes"}
    labels = [m for m in markers if m.type == Marker.TEXT_VIEW_FACING]
    assert sorted(wires) == [0, 1, 8] and [m.id for m in labels] == list(range(5))
    corners = boxes.corners()

    def segments(points) -> set:
        return {frozenset(map(tuple, pair)) for pair in np.round(points, 6).reshape(-1, 2, 3)}

    for label_index, wire in wires.items():
        name = DETECTION_CLASSES[label_index]
        mine = np.flatnonzero(boxes.label == label_index)
        assert (wire.color.r, wire.color.g, wire.color.b) == pytest.approx(DETECTION_CLASS_COLORS[name])
        # A box's edges: the corner pairs as far apart as one of its length, width, height.
        edges = [(corners[i, a], corners[i, b]) for i in mine for a in range(8) for b in range(a + 1, 8)
                 if np.isclose(np.linalg.norm(corners[i, a] - corners[i, b]), boxes.size_lwh[i]).any()]
        assert len(edges) == 12 * len(mine) and len(wire.points) == 2 * len(edges)
        assert segments([[p.x, p.y, p.z] for p in wire.points]) == segments(np.array(edges))
    for i, label in enumerate(labels):
        assert label.text == f"{DETECTION_CLASSES[boxes.label[i]]} {boxes.score[i]:.2f}"
        assert label.pose.position.z == pytest.approx(boxes.center[i, 2] + boxes.size_lwh[i, 2] / 2 + 0.6)
    # Only the two moving pedestrians have arrows; each shaft ends where the box is 1 s later.
    arrows = [m for m in markers if m.ns == "detections/velocity"]
    assert [m.id for m in arrows] == [8] and len(arrows[0].points) == 2 * 6
    for k, i in enumerate((1, 4)):
        start, tip, *head = np.array([[p.x, p.y, p.z] for p in arrows[0].points[6 * k:6 * k + 6]])
        shaft = boxes.velocity[i] * box_messages.ARROW_HORIZON_S
        assert start[:2] == pytest.approx(boxes.center[i, :2]) and tip[:2] == pytest.approx(boxes.center[i, :2] + shaft)
        # The head: two strokes from the tip back along the shaft, 25 degrees either side of it.
        for stroke_start, stroke_end in (head[:2], head[2:]):
            assert stroke_start == pytest.approx(tip)
            back = (stroke_end - stroke_start)[:2]
            assert 0 < np.linalg.norm(back) <= np.linalg.norm(shaft) / 3 + 1e-9
            angle = np.degrees(np.arccos(-back @ shaft / np.linalg.norm(back) / np.linalg.norm(shaft)))
            assert angle == pytest.approx(25.0)


def test_occupancy_grid_values_origin_and_unknown_cells():
    probability = ros_samples.probability_map(seed=7)
    msg = conv.probability_to_grid(probability, ros_samples.GRID, ros_samples.header())
    cells = np.frombuffer(msg.data, np.int8).reshape(ros_samples.GRID.height, ros_samples.GRID.width)
    assert (cells[0, :5] == -1).all() and cells.max() <= 100 and cells[1:].min() >= 0
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (-10.0, -8.0)
    assert msg.info.resolution == 0.5 and msg.header.frame_id == "LIDAR_TOP"
    back, grid = conv.grid_to_probability(msg)
    assert grid == ros_samples.GRID
    np.testing.assert_allclose(back, probability, atol=1e-9)
    with pytest.raises(MessageError, match="map shape"):
        conv.probability_to_grid(probability[:, :-1], ros_samples.GRID, ros_samples.header())


def test_tf_round_trip():
    rng = np.random.default_rng(8)
    q = rng.normal(size=4)
    matrix = np.eye(4)
    from vexkd_core.geometry import quaternion_to_matrix
    matrix[:3, :3] = quaternion_to_matrix(q)
    matrix[:3, 3] = rng.normal(size=3) * 10
    stamp = conv.ns_to_stamp(ros_samples.STAMP_NS)
    msg = conv.matrices_to_tf_message([("base_link", "LIDAR_TOP", matrix, stamp)])
    (key, (ns, back)), = conv.tf_message_to_matrices(msg).items()
    assert key == ("base_link", "LIDAR_TOP") and ns == ros_samples.STAMP_NS
    np.testing.assert_allclose(back, matrix, atol=1e-12)


def test_built_interfaces_hash_like_upstream():
    """vision_msgs/tf2_msgs built from interfaces/ must be wire-compatible with real ROS."""
    from pathlib import Path

    from rosbags.typesys import Stores, get_typestore, get_types_from_msg
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    jazzy = get_typestore(Stores.ROS2_JAZZY)
    assert _type_hash(TFMessage) == jazzy.hash_rihs01("tf2_msgs/msg/TFMessage")
    interfaces = Path(__file__).resolve().parent.parent / "interfaces" / "vision_msgs" / "msg"
    for path in interfaces.glob("*.msg"):
        jazzy.register(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{path.stem}"))
    assert _type_hash(Detection3DArray) == jazzy.hash_rihs01("vision_msgs/msg/Detection3DArray")


def _type_hash(message_class) -> str:
    """The RIHS01 hash rosidl recorded when it generated the message package."""
    import json
    from pathlib import Path

    package = message_class.__module__.split(".")[0]
    module_dir = Path(__import__(package).__file__).resolve()
    # <prefix>/lib/pythonX.Y/site-packages/<package>/__init__.py -> <prefix>/share/<package>
    description = module_dir.parents[4] / "share" / package / "msg" / f"{message_class.__name__}.json"
    return json.loads(description.read_text())["type_hashes"][0]["hash_string"]
