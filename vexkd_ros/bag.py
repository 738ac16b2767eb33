"""rosbag2 files through `rosbags` (no ROS install needed): a writer that only ever leaves
complete bags under their final name, and `vexkd-ros nuscenes-to-bag`'s scene writer.

Messages are rclpy objects serialised by rclpy itself, so a bag holds exactly the bytes a
live publisher would send; types that rosbags does not ship (vision_msgs) are registered
from the .msg files rosidl installed next to the Python package.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from rclpy.serialization import serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg
from tqdm import tqdm

from .scene_messages import SceneMessages

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_NEVER = QosTime(sec=0, nsec=0)
LATCHED = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _NEVER, _NEVER,
              QosLiveliness.AUTOMATIC, _NEVER, False)
LATCHED_TOPICS = ("/tf_static",)


class BagError(RuntimeError):
    """A bag that cannot be written or read as asked."""


def type_name(message_class) -> str:
    """'sensor_msgs/msg/PointCloud2' for an rclpy message class."""
    return f"{message_class.__module__.split('.')[0]}/msg/{message_class.__name__}"


def typestore_for(message_classes) -> object:
    """A rosbags typestore that knows every given rclpy message type.

    Types rosbags lacks are read from the `.msg` files rosidl installed under
    `<prefix>/share/<package>/msg` (a real ROS install and this venv alike).
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    for message_class in message_classes:
        if type_name(message_class) in store.types:
            continue
        package = message_class.__module__.split(".")[0]
        module_file = Path(__import__(package).__file__).resolve()
        msg_dir = module_file.parents[4] / "share" / package / "msg"  # <prefix>/lib/pythonX.Y/site-packages/pkg
        if not msg_dir.is_dir():
            raise BagError(f"no .msg definitions for {package} in {msg_dir}")
        types = {}
        for path in sorted(msg_dir.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
        store.register(types)
    return store


class AtomicBagWriter:
    """A rosbag2 written under `<name>.partial/` and moved to `<name>` only when closed cleanly."""

    def __init__(self, path: Path, storage: str = "mcap"):
        if storage not in STORAGES:
            raise BagError(f"storage must be mcap or sqlite3, not '{storage}'")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} already exists; remove it or write the bag elsewhere")
        # Written as <name>.partial/<name> so the storage file already has its final name inside.
        self.partial = self.path.with_name(self.path.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)  # what an interrupted earlier run left
        self.partial.mkdir(parents=True)
        self.writer = Writer(self.partial / self.path.name, version=9, storage_plugin=STORAGES[storage])
        self.connections: dict[str, object] = {}
        self.typestore = None
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "AtomicBagWriter":
        self.writer.open()
        return self

    def write(self, topic: str, stamp_ns: int, msg, message_class=None) -> None:
        """Write an rclpy message, or raw CDR bytes together with their `message_class`."""
        message_class = message_class or type(msg)
        connection = self.connections.get(topic)
        if connection is None:
            if self.typestore is None or type_name(message_class) not in self.typestore.types:
                self.typestore = typestore_for([message_class])
            connection = self.connections[topic] = self.writer.add_connection(
                topic, type_name(message_class), typestore=self.typestore,
                offered_qos_profiles=[LATCHED] if topic in LATCHED_TOPICS else [])
        data = msg if isinstance(msg, (bytes, memoryview)) else serialize_message(msg)
        self.writer.write(connection, stamp_ns, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def __exit__(self, kind, error, trace) -> None:
        try:
            self.writer.close()
        finally:
            if kind is None:
                os.replace(self.partial / self.path.name, self.path)
            shutil.rmtree(self.partial, ignore_errors=True)


def write_scene_bag(messages: SceneMessages, path: Path, storage: str = "mcap", progress: bool = True) -> dict:
    """One scene -> one bag; returns messages per topic."""
    with AtomicBagWriter(path, storage) as writer:
        static = messages.static_transforms()
        writer.write(static.topic, static.stamp_ns, static.msg)
        for record in tqdm(messages.records, unit="sample_data", disable=not progress,
                           desc=f"bag {messages.scene['name']}"):
            for message in messages.record_messages(record):
                writer.write(message.topic, message.stamp_ns, message.msg)
    return writer.counts
