"""ROS message <-> numpy conversions: clouds, images, calibration, grids, transforms (boxes:
box_messages.py). No model code lives here.

Reads are zero-copy views where the layout allows; writes fill `msg.data` from one bytes
buffer (`array.array.frombytes`), never element by element. A message that cannot be
converted raises `MessageError` with a one-line reason, so nodes can log it and go on.
"""
from __future__ import annotations

import array
from typing import Iterable, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Quaternion, TransformStamped, Vector3
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from vexkd_core.data.distortion import Distortion, DistortionError, distortion_of
from vexkd_core.data.sensor_files import decode_image
from vexkd_core.geometry import make_transform, matrix_to_quaternion
from vexkd_core.structures import BEVGrid

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


def camera_info_to_distortion(msg: CameraInfo) -> Distortion | None:
    """The lens distortion CameraInfo declares (None: a pinhole), or a MessageError naming the
    model when it is one the node cannot remove."""
    try:
        return distortion_of(msg.distortion_model, msg.d)
    except DistortionError as error:
        raise MessageError(f"CameraInfo '{msg.header.frame_id}': {error}") from None


def intrinsics_to_camera_info(k: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    projection = np.zeros((3, 4))
    projection[:3, :3] = k
    return CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=k.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                      p=projection.reshape(-1).tolist())


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
