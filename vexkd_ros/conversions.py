"""ROS message <-> numpy conversions. No model code lives here.

Reads are zero-copy views where the layout allows; writes fill `msg.data` from one bytes
buffer (`array.array.frombytes`), never element by element. A message that cannot be
converted raises `MessageError` with a one-line reason, so nodes can log it and go on.
"""
from __future__ import annotations

import array
import copy
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, TransformStamped, Vector3
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import (BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis,
                             ObjectHypothesisWithPose)
from visualization_msgs.msg import Marker, MarkerArray

from vexkd_core.classes import DETECTION_CLASS_COLORS
from vexkd_core.data.sensor_files import decode_image
from vexkd_core.geometry import make_transform, matrix_to_quaternion
from vexkd_core.structures import BEVGrid, Boxes3D

# A velocity marker arrow ends where the box centre will be this many seconds later.
ARROW_HORIZON_S = 1.0
# Fields of the per-object velocity cloud (see boxes_to_velocities), in this order.
VELOCITY_FIELDS = ("x", "y", "z", "vx", "vy", "vz")
# An image larger than this is refused before it is decoded: a JPEG header may claim
# 20000x20000 (1.2 GB of pixels) in a few bytes. 16k x 16k leaves every real camera in.
MAX_DECODED_PIXELS = 16384 * 16384

REQUIRED_POINT_FIELDS = ("x", "y", "z", "intensity")
_POINT_FIELD_DTYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8,
    PointField.INT16: np.int16, PointField.UINT16: np.uint16,
    PointField.INT32: np.int32, PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}
_DTYPE_POINT_FIELDS = {np.dtype(v): k for k, v in _POINT_FIELD_DTYPES.items()}
_IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}


class MessageError(ValueError):
    """A message that cannot be converted; str() is a one-line reason."""


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _byte_view(data) -> np.ndarray:
    """uint8 view of a message's data field (array.array, bytes, or a list when hand-built)."""
    if isinstance(data, list):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _packed_bytes(values: np.ndarray, typecode: str = "B") -> array.array:
    packed = array.array(typecode)
    packed.frombytes(np.ascontiguousarray(values).tobytes())
    return packed


# ----------------------------------------------------------------------- point clouds
def cloud_to_array(msg: PointCloud2, required: Sequence[str] = REQUIRED_POINT_FIELDS) -> np.ndarray:
    """The cloud as a structured array of its named fields, a view on `msg.data`.

    Fields are found by name at their own offsets (any order, padding, extra fields); the
    `required` ones must be there. x, y, z must be float32/float64; big-endian clouds are refused.
    """
    if msg.is_bigendian:
        raise MessageError("big-endian PointCloud2 is not supported")
    names = [field.name for field in msg.fields]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:  # which of two 'x' fields is the coordinate? refuse rather than guess
        raise MessageError(f"PointCloud2 has duplicate field name(s) {', '.join(duplicates)}")
    fields = {}
    for field in msg.fields:
        if field.datatype not in _POINT_FIELD_DTYPES:
            raise MessageError(f"point field '{field.name}' has unknown datatype {field.datatype}")
        if field.count != 1:
            continue  # vector fields are not point attributes the models use
        fields[field.name] = (np.dtype(_POINT_FIELD_DTYPES[field.datatype]), field.offset)
    missing = [name for name in required if name not in fields]
    if missing:
        raise MessageError(f"PointCloud2 lacks field(s) {', '.join(missing)}")
    for name in {"x", "y", "z"} & set(fields):
        if fields[name][0].kind != "f":
            raise MessageError(f"point field '{name}' is {fields[name][0]}, expected float32/64")
    ends = [offset + dtype.itemsize for dtype, offset in fields.values()]
    width, height, point_step, row_step = msg.width, msg.height, msg.point_step, msg.row_step
    if max(ends) > point_step:
        raise MessageError(f"point fields end at byte {max(ends)} beyond point_step {point_step}")
    if row_step < width * point_step:
        raise MessageError(f"row_step {row_step} < width {width} x point_step {point_step}")
    raw = _byte_view(msg.data)
    if raw.size < row_step * height:
        raise MessageError(f"PointCloud2 data has {raw.size} bytes, header says {row_step * height}")
    dtype = np.dtype({"names": list(fields), "formats": [d for d, _ in fields.values()],
                      "offsets": [o for _, o in fields.values()], "itemsize": point_step})
    if width * height == 0:
        return np.zeros(0, dtype=dtype)
    # A strided view; flattening copies only when rows are padded (row_step > width * point_step).
    view = np.ndarray(shape=(height, width), dtype=dtype, buffer=raw,
                      strides=(row_step, point_step))
    return view.reshape(-1)


def cloud_to_points(msg: PointCloud2, optional: Sequence[str] = ("time",)) -> np.ndarray:
    """(N, 4 + len(optional)) float32: x, y, z, intensity, then each optional field or 0."""
    cloud = cloud_to_array(msg)
    names = list(REQUIRED_POINT_FIELDS) + list(optional)
    points = np.zeros((len(cloud), len(names)), dtype=np.float32)
    for column, name in enumerate(names):
        if name in cloud.dtype.names:
            points[:, column] = cloud[name]
    return points


def array_to_cloud(points: np.ndarray, header: Header) -> PointCloud2:
    """A dense PointCloud2 from a structured array of little-endian numeric scalar fields."""
    if points.dtype.names is None:
        raise MessageError("array_to_cloud needs a structured array (named fields)")
    packed = np.ascontiguousarray(points)
    fields = []
    for name in packed.dtype.names:
        dtype, offset = packed.dtype.fields[name][:2]
        if dtype.newbyteorder("=") not in _DTYPE_POINT_FIELDS or dtype.byteorder == ">":
            raise MessageError(f"field '{name}' has dtype {dtype}, not a PointField type")
        fields.append(PointField(name=name, offset=offset, count=1,
                                 datatype=_DTYPE_POINT_FIELDS[dtype.newbyteorder("=")]))
    return PointCloud2(header=header, height=1, width=len(packed), fields=fields,
                       is_bigendian=False, point_step=packed.dtype.itemsize,
                       row_step=packed.dtype.itemsize * len(packed), is_dense=True,
                       data=_packed_bytes(packed.view(np.uint8)))


def structured_points(**columns: np.ndarray) -> np.ndarray:
    """Pack equal-length 1-D columns, keeping each one's dtype, into a structured array."""
    lengths = {len(c) for c in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns have different lengths {sorted(lengths)}")
    out = np.empty(lengths.pop(), dtype=[(name, np.asarray(c).dtype) for name, c in columns.items()])
    for name, column in columns.items():
        out[name] = column
    return out


# ----------------------------------------------------------------------- images
def image_to_rgb(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB from an rgb8/bgr8/rgba8/bgra8/mono8 Image (row padding allowed)."""
    channels = _IMAGE_CHANNELS.get(msg.encoding)
    if channels is None:
        raise MessageError(f"image encoding '{msg.encoding}' is not one of {sorted(_IMAGE_CHANNELS)}")
    height, width, step = msg.height, msg.width, msg.step
    if width == 0 or height == 0:
        raise MessageError("image is empty")
    if step < width * channels:
        raise MessageError(f"image step {step} < width {width} x {channels} channels")
    raw = _byte_view(msg.data)
    if raw.size < step * height:
        raise MessageError(f"image data has {raw.size} bytes, header says {step * height}")
    pixels = np.ndarray((height, width, channels), np.uint8, raw, strides=(step, channels, 1))
    if msg.encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if msg.encoding == "rgb8":
        # Packed rows come back as a view on msg.data (no copy); padded rows are copied.
        return pixels if step == width * 3 else np.ascontiguousarray(pixels)
    # cv2 swaps channels several times faster than a reversed numpy slice.
    return cv2.cvtColor(pixels, _TO_RGB[msg.encoding])


def rgb_to_image(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MessageError(f"expected HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    if encoding not in ("rgb8", "bgr8"):
        raise MessageError(f"rgb_to_image writes rgb8 or bgr8, not '{encoding}'")
    pixels = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    height, width = rgb.shape[:2]
    return Image(header=header, height=height, width=width, encoding=encoding,
                 is_bigendian=0, step=width * 3, data=_packed_bytes(pixels))


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): every
# 0xC0..0xCF except DHT (C4), JPG (C8) and DAC (CC), which are tables, not frames.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """(width, height) from the first SOF segment, walking the marker segments before it."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _JPEG_SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return width, height
        position += 2 + length
    return None


def encoded_image_size(data) -> tuple[int, int] | None:
    """(width, height) a JPEG or PNG says it has, read from its header without decoding;
    None for other formats or a header too broken to say (decoding will then fail)."""
    data = memoryview(_byte_view(data))  # zero-copy: slices and indexing read the message's buffer
    if bytes(data[:2]) == b"\xff\xd8":
        return _jpeg_size(data)
    if bytes(data[:8]) == _PNG_SIGNATURE and bytes(data[12:16]) == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def compressed_to_rgb(msg: CompressedImage, reduction: int = 1) -> np.ndarray:
    """HxWx3 uint8 RGB from a JPEG or PNG CompressedImage, `reduction` (1, 2, 4, 8) times
    smaller on each side, decoded as the dataset reader decodes (sensor_files.decode_image);
    one whose header claims more than MAX_DECODED_PIXELS is refused before decoding (cv2
    would allocate it first)."""
    encoded = _byte_view(msg.data)
    if encoded.size == 0:
        raise MessageError("compressed image has no data")
    size = encoded_image_size(encoded)
    if size is not None and size[0] * size[1] > MAX_DECODED_PIXELS:
        raise MessageError(f"compressed image header says {size[0]}x{size[1]} pixels, more than "
                           f"{MAX_DECODED_PIXELS}: not decoded")
    rgb = decode_image(encoded, reduction)
    if rgb is None:
        raise MessageError(f"compressed image (format '{msg.format}') could not be decoded")
    return rgb


def encoded_to_compressed(encoded: bytes, header: Header, image_format: str = "jpeg") -> CompressedImage:
    """Wrap already encoded JPEG/PNG bytes (e.g. a nuScenes .jpg) without re-encoding."""
    data = array.array("B")
    data.frombytes(encoded)
    return CompressedImage(header=header, format=image_format, data=data)


def rgb_to_compressed(rgb: np.ndarray, header: Header, image_format: str = "jpeg",
                      jpeg_quality: int = 90) -> CompressedImage:
    extension = {"jpeg": ".jpg", "png": ".png"}.get(image_format)
    if extension is None:
        raise MessageError(f"compressed format '{image_format}' is not jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpeg" else []
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise MessageError(f"could not encode a {rgb.shape} image as {image_format}")
    return encoded_to_compressed(encoded.tobytes(), header, image_format)


def camera_info_to_intrinsics(msg: CameraInfo) -> np.ndarray:
    """3x3 pinhole intrinsic matrix K with K[2] = (0, 0, 1).

    The whole matrix is checked, because the model inverts it: finite, positive focal
    lengths, a bottom row (0, 0, s) with s > 0. A projective scale s != 1 is divided out
    (K and K / s project alike); anything else is refused.
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    frame = msg.header.frame_id
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise MessageError(f"CameraInfo '{frame}' has no valid focal length in k")
    if k[2, 0] != 0 or k[2, 1] != 0 or not k[2, 2] > 0:
        raise MessageError(f"CameraInfo '{frame}' k has bottom row {k[2].tolist()}, not (0, 0, 1): "
                           "not an invertible pinhole matrix")
    k = k / k[2, 2]
    if not np.all(np.isfinite(k)) or not np.isfinite(np.linalg.cond(k)):
        raise MessageError(f"CameraInfo '{frame}' k is not invertible")
    return k


def intrinsics_to_camera_info(k: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    projection = np.zeros((3, 4))
    projection[:3, :3] = k
    return CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=k.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                      p=projection.reshape(-1).tolist())


# ----------------------------------------------------------------------- boxes
def yaw_from_quaternion(q: Quaternion) -> float:
    return float(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z)))


def box_poses(boxes: Boxes3D) -> list[Pose]:
    """Each box's pose: its centre, and its yaw as a rotation about +z (the quaternion of
    geometry.yaw_to_quaternion). Python floats are taken in one go: a numpy scalar costs a
    conversion each."""
    half = boxes.yaw / 2.0
    rows = np.column_stack([boxes.center, np.cos(half), np.sin(half)]).tolist()
    return [Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(w=w, z=qz)) for x, y, z, w, qz in rows]


def copies(template) -> Callable[[], object]:
    """A maker of shallow copies of a filled-in message. Building many messages of one kind
    this way is several times faster: a rosidl constructor makes every default sub-message
    even when given one (a Marker's header, pose, scale, colour, texture, ...: about 60 us
    a Marker, 5 for a copy). The copies share the template's sub-messages, so a field that
    differs must be assigned a new object, never changed in place."""
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
_ARROW_HEAD_M, _ARROW_HEAD_ANGLE = 0.5, np.radians(25.0)  # each of the arrow head's two strokes


def boxes_to_markers(boxes: Boxes3D, class_names: Sequence[str], header: Header,
                     namespace: str = "detections") -> MarkerArray:
    """After a DELETEALL of the last frame: per class, one LINE_LIST of its boxes' wireframes
    (`<namespace>/boxes`) and one of its moving boxes' velocity arrows (`/velocity`: shaft
    from the centre to where it is ARROW_HORIZON_S later, and a two-stroke head), id the
    class index; per box a label with class and score (`/labels`, id the box index).

    One line list per class rather than per box: RViz makes a scene object per marker, and
    building and serialising a marker is most of the cost (200 boxes: 600 markers took 48 ms
    to build and 20 to serialise in Python). The DELETEALL has an empty namespace: since
    Humble RViz deletes only the markers of exactly the namespace a DELETEALL names; an
    empty one clears everything this topic's display holds.
    """
    markers = [Marker(header=header, ns="", action=Marker.DELETEALL)]
    upright = Pose(orientation=Quaternion(w=1.0))
    names = [class_names[label] for label in boxes.label.tolist()]
    colors = {name: ColorRGBA(r=r, g=g, b=b, a=1.0)
              for name in set(names) for r, g, b in [DETECTION_CLASS_COLORS.get(name, (1.0, 1.0, 1.0))]}
    edges = boxes.corners()[:, _EDGE_CORNERS]
    arrows = _arrow_strokes(boxes)
    moving = np.hypot(boxes.velocity[:, 0], boxes.velocity[:, 1]) > _MOVING_M_S
    for name in sorted(colors, key=class_names.index):
        of_class = boxes.label == class_names.index(name)
        for kind, strokes, width in (("boxes", edges[of_class], 0.08), ("velocity", arrows[of_class & moving], 0.15)):
            if len(strokes):
                markers.append(Marker(header=header, ns=f"{namespace}/{kind}", id=class_names.index(name),
                                      type=Marker.LINE_LIST, action=Marker.ADD, pose=upright,
                                      scale=Vector3(x=width), color=colors[name],
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
    strokes = [start, tip]
    for side in (1.0, -1.0):
        back = heading + np.pi + side * _ARROW_HEAD_ANGLE
        strokes += [tip, tip + _ARROW_HEAD_M * np.column_stack([np.cos(back), np.sin(back), np.zeros(len(boxes))])]
    return np.stack(strokes, axis=1)


# ----------------------------------------------------------------------- BEV grids
def probability_to_grid(probability: np.ndarray, grid: BEVGrid, header: Header) -> OccupancyGrid:
    """OccupancyGrid 0..100 (NaN -> -1 unknown) from a [y, x] probability map on `grid`."""
    if probability.shape != (grid.height, grid.width):
        raise MessageError(f"map shape {probability.shape} != grid ({grid.height}, {grid.width})")
    values = np.where(np.isnan(probability), -1,
                      np.rint(np.clip(np.nan_to_num(probability), 0.0, 1.0) * 100)).astype(np.int8)
    msg = OccupancyGrid(header=header)
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(grid.resolution)
    msg.info.width, msg.info.height = grid.width, grid.height
    msg.info.origin.position = Point(x=float(grid.x_min), y=float(grid.y_min), z=0.0)
    msg.info.origin.orientation.w = 1.0
    msg.data = _packed_bytes(values, "b")
    return msg


def grid_to_probability(msg: OccupancyGrid) -> tuple[np.ndarray, BEVGrid]:
    """Inverse of probability_to_grid: a [y, x] map in 0..1 with NaN for unknown, and its grid."""
    info = msg.info
    values = np.frombuffer(msg.data, dtype=np.int8) if not isinstance(msg.data, list) \
        else np.asarray(msg.data, dtype=np.int8)
    if values.size != info.width * info.height:
        raise MessageError(f"OccupancyGrid has {values.size} cells, info says "
                           f"{info.width} x {info.height}")
    probability = np.where(values < 0, np.nan, values / 100.0).reshape(info.height, info.width)
    grid = BEVGrid(info.origin.position.x, info.origin.position.y, info.resolution,
                   info.width, info.height)
    return probability, grid


# ----------------------------------------------------------------------- transforms
def transform_to_matrix(transform: TransformStamped) -> np.ndarray:
    """4x4 matrix mapping child-frame coordinates into the parent (header) frame."""
    t, q = transform.transform.translation, transform.transform.rotation
    return make_transform([q.w, q.x, q.y, q.z], [t.x, t.y, t.z])


def matrix_to_transform(matrix: np.ndarray, parent: str, child: str, stamp: Time) -> TransformStamped:
    w, x, y, z = matrix_to_quaternion(matrix[:3, :3])
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id, msg.header.stamp = parent, stamp
    msg.transform.translation = Vector3(x=float(matrix[0, 3]), y=float(matrix[1, 3]),
                                        z=float(matrix[2, 3]))
    msg.transform.rotation = Quaternion(w=float(w), x=float(x), y=float(y), z=float(z))
    return msg


def tf_message_to_matrices(msg: TFMessage) -> dict[tuple[str, str], tuple[int, np.ndarray]]:
    """{(parent, child): (stamp ns, 4x4)} for each transform in the message."""
    return {(t.header.frame_id, t.child_frame_id): (stamp_to_ns(t.header.stamp), transform_to_matrix(t))
            for t in msg.transforms}


def matrices_to_tf_message(transforms: Iterable[tuple[str, str, np.ndarray, Time]]) -> TFMessage:
    """TFMessage from (parent, child, 4x4, stamp) tuples."""
    return TFMessage(transforms=[matrix_to_transform(m, p, c, s) for p, c, m, s in transforms])
