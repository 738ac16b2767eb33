"""Messages written straight to the bytes a ROS 2 publisher sends (little-endian CDR, as
rmw_fastrtps serialises them), for the outputs that carry a record per box.

Building 200 boxes as rclpy message objects and having rclpy convert and serialise them
took 12 ms of a 77 ms LiDAR frame (bench_nodes); writing the same bytes from numpy takes a
fraction of that. `Publisher.publish` sends bytes as they are, and a bag takes them too.

The layouts follow the message definitions field by field; `check_layout` compares them
with the definitions the running ROS install has, and `read_back` has this process's rmw
read a written message and write it again, so a node on a distro or rmw that differs stops
with a clear error instead of sending bytes its subscribers misread.
"""
from __future__ import annotations

import struct
from typing import Callable, Mapping

import numpy as np
import rclpy
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

# Encapsulation: CDR, little endian, no options (rmw_fastrtps' serialized messages start so).
_CDR_LE = b"\x00\x01\x00\x00"

# Layouts (see check_layout) of the common messages the box writers write field by field.
_XYZ = {"x": "double", "y": "double", "z": "double"}
HEADER = ("std_msgs/Header", {"stamp": ("builtin_interfaces/Time", {"sec": "int32", "nanosec": "uint32"}),
                              "frame_id": "string"})
VECTOR3 = ("geometry_msgs/Vector3", _XYZ)
POINT = ("geometry_msgs/Point", _XYZ)
POSE = ("geometry_msgs/Pose", {"position": POINT,
                               "orientation": ("geometry_msgs/Quaternion", {**_XYZ, "w": "double"})})
POSE_WITH_COVARIANCE = ("geometry_msgs/PoseWithCovariance", {"pose": POSE, "covariance": "double[36]"})
TWIST_WITH_COVARIANCE = ("geometry_msgs/TwistWithCovariance", {
    "twist": ("geometry_msgs/Twist", {"linear": VECTOR3, "angular": VECTOR3}), "covariance": "double[36]"})


class LayoutError(RuntimeError):
    """This ROS install defines a message differently from the layout written here."""


class CdrWriter:
    """Appends CDR fields; each primitive aligned to its own size, counted from after the
    encapsulation header. Padding is zeros."""

    def __init__(self):
        self._buffer = bytearray(_CDR_LE)

    def _align(self, size: int) -> None:
        self._buffer += bytes(-(len(self._buffer) - len(_CDR_LE)) % size)

    def bytes(self) -> bytes:
        return bytes(self._buffer)

    def uint8(self, value: int) -> None:
        self._buffer.append(value)

    boolean = uint8

    def int32(self, value: int) -> None:
        self._align(4)
        self._buffer += struct.pack("<i", value)

    def uint32(self, value: int) -> None:
        self._align(4)
        self._buffer += struct.pack("<I", value)

    def float32(self, value: float) -> None:
        self._align(4)
        self._buffer += struct.pack("<f", value)

    def float64s(self, values: np.ndarray) -> None:
        """Consecutive float64 fields, a float64 array or the elements of a sequence of
        float64-only messages (Points), from a float64 array. Nothing, not even alignment,
        for no values: an empty sequence's elements."""
        if values.size:
            self._align(8)
            self._buffer += values.astype("<f8", copy=False).tobytes()

    def float32s(self, values: np.ndarray) -> None:
        self._align(4)
        self._buffer += values.astype("<f4", copy=False).tobytes()

    def string(self, text: str) -> None:
        self._align(4)
        data = text.encode()
        self._buffer += struct.pack("<I", len(data) + 1) + data + b"\0"

    def header(self, header: Header) -> None:
        self.int32(header.stamp.sec)
        self.uint32(header.stamp.nanosec)
        self.string(header.frame_id)

    def fragment(self, data: bytes) -> None:
        """Fields encoded once by `fragment` and written many times."""
        self._align(4)
        self._buffer += data


def fragment(write: Callable[[CdrWriter], None]) -> bytes:
    """The bytes `write` gives on its own, for CdrWriter.fragment: only fields aligned to at
    most 4 bytes (integers, float32, strings, headers), so that they are the same bytes at
    any 4-byte aligned position."""
    writer = CdrWriter()
    write(writer)
    return writer.bytes()[len(_CDR_LE):]


def check_layout(message_class, layout: Mapping[str, object]) -> None:
    """Raise LayoutError unless `message_class` has exactly the fields of `layout`, recursively.

    `layout` maps field name -> rosidl type string (as get_fields_and_field_types gives it),
    or -> (type string, nested layout) for a message field or sequence whose own fields are
    written field by field here.
    """
    fields = message_class.get_fields_and_field_types()
    expected = {name: kind if isinstance(kind, str) else kind[0] for name, kind in layout.items()}
    if fields != expected:
        raise LayoutError(f"{_type_name(message_class)} on this ROS install has fields {fields}; the node writes "
                          f"{expected}: its output cannot be serialised for this distro")
    for name, kind in layout.items():
        if not isinstance(kind, str):
            check_layout(_field_class(message_class, name), kind[1])


def read_back(data: bytes, message_class):
    """`data` as a subscriber reads it: deserialised by this process's rmw. LayoutError unless
    that rmw writes the message it read as the same bytes, padding aside (where this writer
    puts zeros and rmw_fastrtps leaves whatever its buffer held)."""
    try:
        msg = deserialize_message(data, message_class)
        reference = serialize_message(msg)
    except Exception as error:  # rclpy raises whatever the rmw's deserializer threw
        raise LayoutError(f"{_type_name(message_class)}: {rclpy.get_rmw_implementation_identifier()} cannot read "
                          f"the bytes the node writes ({error})") from None
    ours, theirs = np.frombuffer(data, np.uint8), np.frombuffer(reference, np.uint8)
    if len(ours) != len(theirs) or not ((ours == theirs) | (ours == 0)).all():
        raise LayoutError(f"{_type_name(message_class)}: {rclpy.get_rmw_implementation_identifier()} serialises it "
                          "otherwise than the node writes it")
    return msg


def _type_name(message_class) -> str:
    return f"{message_class.__module__.split('.')[0]}/{message_class.__name__}"


def _field_class(message_class, name: str):
    """The message class of a field (of a sequence's elements for a sequence)."""
    slot = message_class.SLOT_TYPES[list(message_class.get_fields_and_field_types()).index(name)]
    slot = getattr(slot, "value_type", slot)  # a sequence's element type
    module = __import__(".".join(slot.namespaces), fromlist=[slot.name])
    return getattr(module, slot.name)
