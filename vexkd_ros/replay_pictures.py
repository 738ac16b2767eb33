"""Pictures of a replay: what the nodes published for one key frame, against ground truth.

`bev.png`: per node, the BEV with ground-truth map (grey), predicted map classes (tinted
where the published grid says >= 50), ground-truth boxes (white) and predicted boxes (class
colours). `cameras.jpg`: the six cameras with the LiDAR node's boxes projected into them.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

from vexkd_core.classes import DETECTION_CLASS_COLORS, DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.io import atomic_write_bytes
from vexkd_core.structures import Boxes3D

from .conversions import detections_to_boxes, grid_to_probability, stamp_to_ns
from .player import message_class
from .scene_messages import GT_MAP_GRID

PIXELS = 480
SHOWN_SCORE = 0.3  # boxes drawn; the nodes publish down to the checkpoint's decode threshold
MAP_TINTS = {"drivable_area": (90, 90, 90), "ped_crossing": (200, 160, 240), "walkway": (120, 200, 120),
             "stop_line": (60, 60, 230), "carpark_area": (60, 140, 200), "divider": (0, 220, 255)}  # BGR


def _colour(label: int) -> tuple[int, int, int]:
    r, g, b = DETECTION_CLASS_COLORS.get(DETECTION_CLASSES[label], (1.0, 1.0, 1.0))
    return int(b * 255), int(g * 255), int(r * 255)


def read_outputs(record_bag: Path) -> dict[str, dict[str, dict[int, object]]]:
    """{topic: {stamp_ns: message}} of a recorded stack run's objects and map grids."""
    outputs: dict = {}
    with Reader(record_bag) as reader:
        wanted = [c for c in reader.connections if c.topic.endswith("/output/objects") or "/output/map/" in c.topic]
        for connection, _, data in reader.messages(connections=wanted):
            msg = deserialize_message(data, message_class(connection.msgtype))
            outputs.setdefault(connection.topic, {})[stamp_to_ns(msg.header.stamp)] = msg
    return outputs


def _to_pixels(xy: np.ndarray, half_extent: float) -> np.ndarray:
    """LiDAR-frame metres -> picture pixels, forward (+x) up and left (+y) to the left."""
    scale = PIXELS / (2 * half_extent)
    return np.stack([(half_extent - xy[..., 1]) * scale, (half_extent - xy[..., 0]) * scale], axis=-1)


def _raster(mask: np.ndarray, grid, half_extent: float) -> np.ndarray:
    """A [y, x] mask on `grid` resampled to the picture."""
    pixels = np.arange(PIXELS) + 0.5
    scale = 2 * half_extent / PIXELS
    x = np.broadcast_to(half_extent - pixels[:, None] * scale, (PIXELS, PIXELS))  # picture rows: forward
    y = np.broadcast_to(half_extent - pixels[None, :] * scale, (PIXELS, PIXELS))  # picture columns: left
    cols = np.floor((x - grid.x_min) / grid.resolution).astype(int)
    rows = np.floor((y - grid.y_min) / grid.resolution).astype(int)
    inside = (cols >= 0) & (cols < grid.width) & (rows >= 0) & (rows < grid.height)
    out = np.zeros((PIXELS, PIXELS), bool)
    out[inside] = mask[rows[inside], cols[inside]]
    return out


def _draw_boxes(image: np.ndarray, boxes: Boxes3D, half_extent: float, colour=None) -> None:
    if len(boxes) == 0:
        return
    corners = _to_pixels(boxes.corners()[:, :4, :2], half_extent)
    for i in range(len(boxes)):
        cv2.polylines(image, [np.round(corners[i] * 4).astype(np.int32)], True,
                      colour or _colour(int(boxes.label[i])), 1, cv2.LINE_AA, shift=2)


def bev_panel(title: str, gt_boxes: Boxes3D, gt_masks: np.ndarray, boxes: Boxes3D,
              grids: dict[str, object], half_extent: float) -> np.ndarray:
    image = np.full((PIXELS, PIXELS, 3), 20, np.uint8)
    image[_raster(gt_masks[MAP_CLASSES.index("drivable_area")], GT_MAP_GRID, half_extent)] = (55, 55, 55)
    for name, grid_msg in grids.items():
        probability, grid = grid_to_probability(grid_msg)
        predicted = _raster(np.nan_to_num(probability) >= 0.5, grid, half_extent)
        image[predicted] = (0.5 * image[predicted] + 0.5 * np.array(MAP_TINTS[name])).astype(np.uint8)
    _draw_boxes(image, gt_boxes, half_extent, (255, 255, 255))
    _draw_boxes(image, boxes.select(boxes.score >= SHOWN_SCORE), half_extent)
    cv2.putText(image, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def camera_panels(sample, boxes: Boxes3D, width: int = 400) -> np.ndarray:
    """The six cameras (front row, back row) with boxes projected through each camera's calibration."""
    shown = boxes.select(boxes.score >= SHOWN_SCORE)
    corners = shown.corners() if len(shown) else np.zeros((0, 8, 3))
    tiles = {}
    for view in sample.cameras:
        image = cv2.cvtColor(view.image, cv2.COLOR_RGB2BGR)
        lidar_to_camera = np.linalg.inv(view.camera_to_lidar)
        for i in range(len(shown)):
            points = corners[i] @ lidar_to_camera[:3, :3].T + lidar_to_camera[:3, 3]
            if np.any(points[:, 2] < 0.5):
                continue  # behind or too close to the camera
            pixels = points @ view.intrinsics.T
            pixels = pixels[:, :2] / pixels[:, 2:3]
            for a, b in ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)):
                cv2.line(image, tuple(np.round(pixels[a]).astype(int)), tuple(np.round(pixels[b]).astype(int)),
                         _colour(int(shown.label[i])), 2, cv2.LINE_AA)
        scale = width / image.shape[1]
        tiles[view.channel] = cv2.resize(image, (width, int(image.shape[0] * scale)))
    rows = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
    return np.vstack([np.hstack([tiles[name] for name in row]) for row in rows])


def replay_pictures(dataroot: Path, version: str, record_bag: Path, out_dir: Path,
                    nodes: tuple[str, ...] = ("lidar_detector", "camera_detector")) -> list[Path]:
    """bev.png and cameras.jpg for the last key frame every node answered."""
    outputs = read_outputs(record_bag)
    source = NuScenesSource(dataroot, version, None, sweeps=0, map_source_grid=GT_MAP_GRID)
    key_stamps = {}
    for index, token in enumerate(source.tokens):
        record = source.nusc.get("sample", token)
        key_stamps[source.nusc.get("sample_data", record["data"]["LIDAR_TOP"])["timestamp"] * 1000] = index
    answered = [set(outputs.get(f"/{node}/output/objects", {})) for node in nodes]
    common = sorted(set(key_stamps).intersection(*answered))
    if not common:
        raise ValueError(f"no key frame in {record_bag} was answered by all of {', '.join(nodes)}")
    stamp = common[-1]
    sample = source.sample(key_stamps[stamp])
    half_extent = GT_MAP_GRID.width * GT_MAP_GRID.resolution / 2
    panels, predictions = [], {}
    for node in nodes:
        predictions[node] = detections_to_boxes(outputs[f"/{node}/output/objects"][stamp], DETECTION_CLASSES)
        grids = {name: outputs[f"/{node}/output/map/{name}"][stamp] for name in MAP_CLASSES
                 if stamp in outputs.get(f"/{node}/output/map/{name}", {})}
        panels.append(bev_panel(node, sample.boxes, sample.map_masks, predictions[node], grids, half_extent))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_bytes(out_dir / "bev.png", cv2.imencode(".png", np.hstack(panels))[1].tobytes()),
               atomic_write_bytes(out_dir / "cameras.jpg",
                                  cv2.imencode(".jpg", camera_panels(sample, predictions[nodes[0]]))[1].tobytes())]
    return written
