"""Pictures of a replay: what the nodes published for one key frame, against ground truth.

`bev.png`: per node, the BEV (forward up) with the predicted map classes filled in their tints
where the published grid says >= 50 and every class's ground truth outlined in its tint,
ground-truth boxes (white) and predicted boxes (class colours) at SHOWN_SCORE and above; under
it one error map per map class (both, predicted only, ground truth only) with its IoU; a legend
on the right. `cameras.jpg`: the six cameras, named, with the first node's boxes projected.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

from vexkd_core.classes import DETECTION_CLASS_COLORS, DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.data.nuscenes_source import NuScenesSource, lidar_to_global_when
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.io import atomic_write_bytes
from vexkd_core.modalities import reads
from vexkd_core.structures import BEVGrid, Boxes3D

from .box_messages import detections_to_boxes
from .conversions import grid_to_probability, stamp_to_ns
from .detector_node import NODE_NAMES
from .player import message_class
from .scene_messages import GT_MAP_GRID

PIXELS = 720  # the main BEV panel: 0.14 m a pixel over the 102.4 m ground-truth map
ERROR_PIXELS = PIXELS // 3  # the per-class error maps, three to a row under it
LEGEND_WIDTH = 300
SHOWN_SCORE = 0.3  # boxes drawn; the nodes publish down to the checkpoint's decode threshold
MAP_THRESHOLD = 0.5
BACKGROUND = (20, 20, 20)
MAP_TINTS = {"drivable_area": (90, 90, 90), "ped_crossing": (200, 160, 240), "walkway": (120, 200, 120),
             "stop_line": (60, 60, 230), "carpark_area": (60, 140, 200), "divider": (0, 220, 255)}  # BGR
# Error maps: the three outcomes of a cell in colours that no tint blend gives.
ERROR_COLOURS = {"predicted, true": (200, 200, 200), "predicted, not true": (40, 40, 220),
                 "true, not predicted": (220, 140, 30)}
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)


def _colour(label: int) -> tuple[int, int, int]:
    r, g, b = DETECTION_CLASS_COLORS.get(DETECTION_CLASSES[label], (1.0, 1.0, 1.0))
    return int(b * 255), int(g * 255), int(r * 255)


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.55) -> None:
    """White text on a dark box, readable over any map colour."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    x, y = origin
    cv2.rectangle(image, (x - 2, y - height - 3), (x + width + 2, y + baseline), (0, 0, 0), -1)
    cv2.putText(image, text, (x, y), FONT, scale, WHITE, 1, cv2.LINE_AA)


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
    """LiDAR-frame metres -> main panel pixels, forward (+x) up and left (+y) to the left."""
    scale = PIXELS / (2 * half_extent)
    return np.stack([(half_extent - xy[..., 1]) * scale, (half_extent - xy[..., 0]) * scale], axis=-1)


def _raster(mask: np.ndarray, grid: BEVGrid, half_extent: float, size: int = PIXELS) -> np.ndarray:
    """A [y, x] mask on `grid` resampled to a size x size picture."""
    pixels = np.arange(size) + 0.5
    scale = 2 * half_extent / size
    x = np.broadcast_to(half_extent - pixels[:, None] * scale, (size, size))  # picture rows: forward
    y = np.broadcast_to(half_extent - pixels[None, :] * scale, (size, size))  # picture columns: left
    cols = np.floor((x - grid.x_min) / grid.resolution).astype(int)
    rows = np.floor((y - grid.y_min) / grid.resolution).astype(int)
    inside = (cols >= 0) & (cols < grid.width) & (rows >= 0) & (rows < grid.height)
    out = np.zeros((size, size), bool)
    out[inside] = mask[rows[inside], cols[inside]]
    return out


def _draw_boxes(image: np.ndarray, boxes: Boxes3D, half_extent: float, colour=None) -> None:
    if len(boxes) == 0:
        return
    corners = _to_pixels(boxes.corners()[:, :4, :2], half_extent)
    for i in range(len(boxes)):
        cv2.polylines(image, [np.round(corners[i] * 4).astype(np.int32)], True,
                      colour or _colour(int(boxes.label[i])), 2, cv2.LINE_AA, shift=2)


def _fill(tint: tuple[int, int, int]) -> np.ndarray:
    """A predicted map class: its tint half over the background."""
    return (0.5 * np.array(BACKGROUND) + 0.5 * np.array(tint)).astype(np.uint8)


def _outline(tint: tuple[int, int, int]) -> tuple[int, int, int]:
    """A ground-truth outline: lighter than the fill, so it shows on it."""
    return tuple(int(c / 2 + 128) for c in tint)


Maps = dict[str, tuple[np.ndarray, BEVGrid]]  # map class -> (probability [y, x], its grid), as published


def map_panel(gt_masks: np.ndarray | None, maps: Maps, half_extent: float) -> np.ndarray:
    """Predicted classes filled in their tints over ground truth outlined in theirs: a fill with
    no outline around it is a false positive, an outline around background a miss. Without
    ground truth (a dataset without the map expansion) only the predictions."""
    image = np.full((PIXELS, PIXELS, 3), BACKGROUND, np.uint8)
    for name, (probability, grid) in maps.items():
        predicted = _raster(np.nan_to_num(probability) >= MAP_THRESHOLD, grid, half_extent)
        image[predicted] = (0.5 * image[predicted] + 0.5 * np.array(MAP_TINTS[name])).astype(np.uint8)
    if gt_masks is None:
        return image
    for index, name in enumerate(MAP_CLASSES):
        truth = _raster(gt_masks[index], GT_MAP_GRID, half_extent).astype(np.uint8)
        contours, _ = cv2.findContours(truth, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, _outline(MAP_TINTS[name]), 1)
    return image


def error_map(name: str, gt_mask: np.ndarray, predicted: tuple[np.ndarray, BEVGrid] | None,
              half_extent: float) -> np.ndarray:
    """One map class's cells in ERROR_COLOURS, titled with its IoU over the picture's pixels
    that the published grid covers (all ground truth a miss when the node published none)."""
    truth = _raster(gt_mask, GT_MAP_GRID, half_extent, ERROR_PIXELS)
    if predicted is None:
        hits, title = np.zeros_like(truth), f"{name}: not published"
    else:
        probability, grid = predicted
        truth &= _raster(np.ones(probability.shape, bool), grid, half_extent, ERROR_PIXELS)
        hits = _raster(np.nan_to_num(probability) >= MAP_THRESHOLD, grid, half_extent, ERROR_PIXELS)
        union = (hits | truth).sum()
        title = f"{name} IoU {(hits & truth).sum() / union:.2f}" if union else f"{name}: none"
    image = np.full((ERROR_PIXELS, ERROR_PIXELS, 3), BACKGROUND, np.uint8)
    for colour, cells in zip(ERROR_COLOURS.values(), (hits & truth, hits & ~truth, truth & ~hits)):
        image[cells] = colour
    cv2.rectangle(image, (0, 0), (ERROR_PIXELS - 1, ERROR_PIXELS - 1), (70, 70, 70), 1)
    _text(image, title, (5, 17), 0.45)
    return image


def bev_panel(title: str, gt_boxes: Boxes3D, gt_masks: np.ndarray | None, boxes: Boxes3D, maps: Maps,
              half_extent: float) -> np.ndarray:
    """One node's column: the BEV with boxes and map, then its error map per map class."""
    image = map_panel(gt_masks, maps, half_extent)
    _draw_boxes(image, gt_boxes, half_extent, WHITE)
    _draw_boxes(image, boxes.select(boxes.score >= SHOWN_SCORE), half_extent)
    _text(image, title, (8, 24), 0.7)
    _text(image, f"boxes: score >= {SHOWN_SCORE:g}   map: p >= {MAP_THRESHOLD:g}", (8, PIXELS - 10))
    return np.vstack([image, _error_maps(gt_masks, maps, half_extent)])


def _error_maps(gt_masks: np.ndarray | None, maps: Maps, half_extent: float) -> np.ndarray:
    """The error maps, three to a row, PIXELS wide; without ground truth a block of their size
    saying so (the columns and the legend keep their height)."""
    rows = -(-len(MAP_CLASSES) // 3)
    if gt_masks is None:
        block = np.full((rows * ERROR_PIXELS, PIXELS, 3), BACKGROUND, np.uint8)
        _text(block, "no map ground truth (the dataset lacks its map expansion)", (8, 24))
        return block
    errors = [error_map(name, gt_masks[index], maps.get(name), half_extent) for index, name in enumerate(MAP_CLASSES)]
    padding = np.full((rows * ERROR_PIXELS, PIXELS - 3 * ERROR_PIXELS, 3), BACKGROUND, np.uint8)
    return np.hstack([np.vstack([np.hstack(errors[i:i + 3]) for i in range(0, len(errors), 3)]), padding])


def legend(height: int) -> np.ndarray:
    """What every colour of the BEV columns means, and the thresholds they are drawn at."""
    image = np.full((height, LEGEND_WIDTH, 3), BACKGROUND, np.uint8)
    entries = [(None, f"Boxes, score >= {SHOWN_SCORE:g}"), (("box", WHITE), "ground truth")]
    entries += [(("box", _colour(label)), name) for label, name in enumerate(DETECTION_CLASSES)]
    entries += [(None, f"Map: fill p >= {MAP_THRESHOLD:g},"), (None, "outline ground truth")]
    entries += [(("map", tint), name) for name, tint in MAP_TINTS.items()]
    entries += [(None, "Error maps (per class)")] + [(("cell", colour), text) for text, colour in ERROR_COLOURS.items()]
    y = 28
    for swatch, text in entries:
        if swatch is None:
            _text(image, text, (10, y + 6), 0.55)
            y += 30
            continue
        kind, colour = swatch
        corner, opposite = (14, y - 8), (44, y + 8)
        if kind == "box":
            cv2.rectangle(image, corner, opposite, colour, 2)
        elif kind == "map":
            cv2.rectangle(image, corner, opposite, tuple(int(c) for c in _fill(colour)), -1)
            cv2.rectangle(image, corner, opposite, _outline(colour), 1)
        else:
            cv2.rectangle(image, corner, opposite, colour, -1)
        _text(image, text, (54, y + 6), 0.5)
        y += 26
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
        _text(tiles[view.channel], view.channel, (6, 20))
    rows = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
    return np.vstack([np.hstack([tiles[name] for name in row]) for row in rows])


def bev_picture(panels: list[np.ndarray]) -> np.ndarray:
    """The nodes' columns side by side, a dark gap between them, and the legend."""
    gap = np.zeros((panels[0].shape[0], 6, 3), np.uint8)
    columns = [part for panel in panels for part in (panel, gap)]
    return np.hstack(columns + [legend(panels[0].shape[0])])


def answer_stamp_channel(node: str) -> str:
    """The sensor whose stamp a node's answers carry: its LiDAR sweep's, or for a camera-only
    node image 0's (CAM_FRONT), which fires some 35 ms before the LiDAR in nuScenes."""
    modality = {name: modality for modality, name in NODE_NAMES.items()}[node]
    return "LIDAR_TOP" if reads(modality, "lidar") else CAMERA_CHANNELS[0]


def _into(boxes: Boxes3D, transform: np.ndarray) -> Boxes3D:
    """Boxes moved by a rigid 4x4 transform about the vertical (as between two LiDAR frames)."""
    turn = np.arctan2(transform[1, 0], transform[0, 0])
    return Boxes3D(boxes.center @ transform[:3, :3].T + transform[:3, 3], boxes.size_lwh, boxes.yaw + turn,
                   boxes.velocity @ transform[:2, :2].T, boxes.label, boxes.score)


def key_frame_answers(outputs: dict, source: NuScenesSource, nodes: tuple[str, ...]) -> tuple[int, dict[str, tuple]]:
    """The last key frame every node answered (its index in `source`) and, per node, its
    boxes moved into that key frame's LiDAR frame and its map grids as published (a camera
    node's are from 35 ms earlier: the ego moves a cell or less). Each node answers a key
    frame under its own trigger's stamp (answer_stamp_channel)."""
    nusc = source.nusc

    def answer_stamp(token: str, node: str) -> int:
        return nusc.get("sample_data", nusc.get("sample", token)["data"][answer_stamp_channel(node)])["timestamp"] * 1000

    answered = [index for index, token in enumerate(source.tokens)
                if all(answer_stamp(token, node) in outputs.get(f"/{node}/output/objects", {}) for node in nodes)]
    if not answered:
        raise ValueError(f"no key frame was answered by all of {', '.join(nodes)}")
    index = max(answered, key=lambda i: nusc.get("sample", source.tokens[i])["timestamp"])
    token = source.tokens[index]
    key_frame_to_global = lidar_to_global_when(nusc, token, "LIDAR_TOP")
    answers = {}
    for node in nodes:
        stamp = answer_stamp(token, node)
        to_key_frame = np.linalg.inv(key_frame_to_global) @ lidar_to_global_when(nusc, token, answer_stamp_channel(node))
        boxes = _into(detections_to_boxes(outputs[f"/{node}/output/objects"][stamp], DETECTION_CLASSES), to_key_frame)
        maps = {name: grid_to_probability(outputs[f"/{node}/output/map/{name}"][stamp]) for name in MAP_CLASSES
                if stamp in outputs.get(f"/{node}/output/map/{name}", {})}
        answers[node] = (boxes, maps)
    return index, answers


def replay_pictures(dataroot: Path, version: str, record_bag: Path, out_dir: Path,
                    nodes: tuple[str, ...] = ("lidar_detector", "camera_detector")) -> list[Path]:
    """bev.png and cameras.jpg for the last key frame every node answered."""
    source = NuScenesSource(dataroot, version, None, sweeps=0, map_source_grid=GT_MAP_GRID)
    try:
        index, answers = key_frame_answers(read_outputs(record_bag), source, nodes)
    except ValueError as error:
        raise ValueError(f"{record_bag}: {error}") from None
    sample = source.sample(index)
    half_extent = GT_MAP_GRID.width * GT_MAP_GRID.resolution / 2
    panels = [bev_panel(node, sample.boxes, sample.map_masks, *answers[node], half_extent) for node in nodes]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_bytes(out_dir / "bev.png", cv2.imencode(".png", bev_picture(panels))[1].tobytes()),
               atomic_write_bytes(out_dir / "cameras.jpg",
                                  cv2.imencode(".jpg", camera_panels(sample, answers[nodes[0]][0]))[1].tobytes())]
    return written
