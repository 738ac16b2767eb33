"""A nuScenes scene as the stream of ROS messages a car would have published.

Every sample_data (key frames and sweeps) becomes one message at its own timestamp, with
`/tf` map -> base_link at that sample_data's ego pose published just before it, so a
consumer that looks a sensor frame up at the sensor's stamp gets the devkit's exact
sensor-to-global transform. The bag writer and the node tests both use this stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rclpy.serialization import deserialize_message
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.data.nuscenes_source import DatasetError, NuScenesSource
from vexkd_core.data.sensor_files import read_points
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.geometry import make_transform
from vexkd_core.structures import BEVGrid

from .box_messages import boxes_to_markers
from .conversions import (array_to_cloud, encoded_to_compressed, intrinsics_to_camera_info, matrices_to_tf_message,
                          ns_to_stamp, probability_to_grid, structured_points)

LIDAR_CHANNEL = "LIDAR_TOP"
FIXED_FRAME, VEHICLE_FRAME = "map", "base_link"
LIDAR_TOPIC = f"/{LIDAR_CHANNEL}"
GROUND_TRUTH_PREFIX = "/ground_truth/"
GT_MARKERS_TOPIC = f"{GROUND_TRUTH_PREFIX}markers"
# Ground-truth map layers around the ego, in the LiDAR frame at key frames.
GT_MAP_GRID = BEVGrid(x_min=-51.2, y_min=-51.2, resolution=0.4, width=256, height=256)


def image_topic(channel: str) -> str:
    return f"/{channel}/image/compressed"


def camera_info_topic(channel: str) -> str:
    return f"/{channel}/camera_info"


def gt_map_topic(name: str) -> str:
    return f"{GROUND_TRUTH_PREFIX}map/{name}"


def scene_topics() -> dict[str, str]:
    """{topic: message type} of every topic a scene bag can hold (ground-truth maps only
    where the dataset has maps)."""
    topics = {LIDAR_TOPIC: "sensor_msgs/msg/PointCloud2", "/tf": "tf2_msgs/msg/TFMessage",
              "/tf_static": "tf2_msgs/msg/TFMessage", GT_MARKERS_TOPIC: "visualization_msgs/msg/MarkerArray"}
    for channel in CAMERA_CHANNELS:
        topics[image_topic(channel)] = "sensor_msgs/msg/CompressedImage"
        topics[camera_info_topic(channel)] = "sensor_msgs/msg/CameraInfo"
    topics.update({gt_map_topic(name): "nav_msgs/msg/OccupancyGrid" for name in MAP_CLASSES})
    return topics


@dataclass
class Message:
    topic: str
    stamp_ns: int
    msg: object
    is_key_frame: bool = False


def scene_sample_data(nusc, scene: dict, channels: tuple[str, ...], sweeps: bool = True) -> list[dict]:
    """The scene's sample_data records of `channels`, by time (key frames only without sweeps)."""
    first = nusc.get("sample", scene["first_sample_token"])
    records = []
    for channel in channels:
        token = first["data"][channel]
        while nusc.get("sample_data", token)["prev"]:  # sweeps before the first key frame
            token = nusc.get("sample_data", token)["prev"]
        while token:
            record = nusc.get("sample_data", token)
            if sweeps or record["is_key_frame"]:
                records.append(record)
            token = record["next"]
    return sorted(records, key=lambda r: (r["timestamp"], r["channel"]))


def _header(stamp_ns: int, frame: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame)


def _cloud(path: Path, header: Header):
    raw = read_points(path)
    return array_to_cloud(structured_points(x=raw[:, 0], y=raw[:, 1], z=raw[:, 2], intensity=raw[:, 3],
                                            ring=raw[:, 4].astype(np.uint16)), header)


def scene_source(dataroot: str | Path, version: str) -> NuScenesSource:
    """Every scene of a dataset, with ground-truth maps on GT_MAP_GRID where the dataset has its
    map expansion files (else none, and `maps_missing` says why)."""
    return NuScenesSource(dataroot, version, None, sweeps=0, map_source_grid=GT_MAP_GRID)


class SceneMessages:
    """Messages of one scene, in time order; `sweeps=False` keeps key frames only."""

    def __init__(self, source: NuScenesSource, scene_name: str, sweeps: bool = True):
        nusc = source.nusc
        scenes = {s["name"]: s for s in nusc.scene}
        if scene_name not in scenes:
            raise DatasetError(f"scene '{scene_name}' is not in the dataset (it has {', '.join(sorted(scenes))})")
        self.source, self.nusc, self.scene = source, nusc, scenes[scene_name]
        self.records = scene_sample_data(nusc, self.scene, (LIDAR_CHANNEL,) + CAMERA_CHANNELS, sweeps)

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """Messages per sensor topic (what a bag of this scene must hold)."""
        counts: dict[str, int] = {}
        for record in self.records:
            channel = record["channel"]
            topics = [LIDAR_TOPIC] if channel == LIDAR_CHANNEL else [image_topic(channel), camera_info_topic(channel)]
            for topic in topics:
                counts[topic] = counts.get(topic, 0) + 1
        return counts

    def static_transforms(self) -> Message:
        """base_link -> every sensor of the scene, once."""
        stamp_ns = self.records[0]["timestamp"] * 1000
        sensors = {}
        for record in self.records:
            calibration = self.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            sensors[record["channel"]] = make_transform(calibration["rotation"], calibration["translation"])
        return Message("/tf_static", stamp_ns, matrices_to_tf_message(
            (VEHICLE_FRAME, channel, matrix, ns_to_stamp(stamp_ns)) for channel, matrix in sensors.items()))

    def __iter__(self) -> Iterator[Message]:
        yield self.static_transforms()
        for record in self.records:
            yield from self.record_messages(record)

    def record_messages(self, record: dict) -> Iterator[Message]:
        stamp_ns, channel = record["timestamp"] * 1000, record["channel"]
        ego = self.nusc.get("ego_pose", record["ego_pose_token"])
        yield Message("/tf", stamp_ns, matrices_to_tf_message(
            [(FIXED_FRAME, VEHICLE_FRAME, make_transform(ego["rotation"], ego["translation"]), ns_to_stamp(stamp_ns))]))
        path = Path(self.nusc.dataroot) / record["filename"]
        header = _header(stamp_ns, channel)
        key = bool(record["is_key_frame"])
        if channel == LIDAR_CHANNEL:
            yield Message(LIDAR_TOPIC, stamp_ns, _cloud(path, header), key)
            if key:
                yield from self._ground_truth(record["sample_token"], stamp_ns, header)
            return
        calibration = self.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        if not path.is_file():
            raise DatasetError(f"camera image {record['filename']} is missing")
        # CameraInfo first: a node triggered by this image then already holds its calibration.
        yield Message(camera_info_topic(channel), stamp_ns, intrinsics_to_camera_info(
            np.asarray(calibration["camera_intrinsic"]), record["width"], record["height"], header), key)
        yield Message(image_topic(channel), stamp_ns, encoded_to_compressed(path.read_bytes(), header), key)

    def _ground_truth(self, sample_token: str, stamp_ns: int, header: Header) -> Iterator[Message]:
        _, boxes, masks = self.source.ground_truth(sample_token)
        # The bytes a node would send, as an rclpy message like every other Message here.
        yield Message(GT_MARKERS_TOPIC, stamp_ns, deserialize_message(
            boxes_to_markers(boxes, DETECTION_CLASSES, header, "ground_truth"), MarkerArray))
        if masks is not None:
            for name, mask in zip(MAP_CLASSES, masks):
                yield Message(gt_map_topic(name), stamp_ns, probability_to_grid(mask.astype(np.float32), GT_MAP_GRID,
                                                                                header))
