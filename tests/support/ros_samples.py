"""Deterministic messages that a publisher process and a checking process both rebuild."""
import cv2
import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.structures import BEVGrid, Boxes3D
from vexkd_ros import box_messages, cdr
from vexkd_ros import conversions as conv

STAMP_NS = 1_533_151_603_547_590_000  # a nuScenes-like timestamp
GRID = BEVGrid(x_min=-10.0, y_min=-8.0, resolution=0.5, width=40, height=32)


def header(frame_id: str = "LIDAR_TOP") -> Header:
    return Header(stamp=conv.ns_to_stamp(STAMP_NS), frame_id=frame_id)


def cloud_columns(seed: int = 0, n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return conv.structured_points(
        x=rng.uniform(-50, 50, n).astype(np.float32), y=rng.uniform(-50, 50, n).astype(np.float32),
        z=rng.uniform(-2, 5, n).astype(np.float32), intensity=rng.uniform(0, 255, n).astype(np.float32),
        ring=rng.integers(0, 32, n).astype(np.uint16))


def rgb_image(seed: int = 0, height: int = 200, width: int = 320) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def boxes(seed: int = 0, n: int = 5) -> Boxes3D:
    rng = np.random.default_rng(seed)
    return Boxes3D(center=rng.uniform(-20, 20, (n, 3)), size_lwh=rng.uniform(0.5, 10, (n, 3)),
                   yaw=rng.uniform(-np.pi, np.pi, n), velocity=rng.uniform(-5, 5, (n, 2)),
                   label=rng.integers(0, len(DETECTION_CLASSES), n), score=rng.uniform(0, 1, n))


def forged_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def probability_map(seed: int = 0) -> np.ndarray:
    probability = np.round(np.random.default_rng(seed).uniform(0, 1, (GRID.height, GRID.width)), 2)
    probability[0, :5] = np.nan  # unknown cells
    return probability


def messages(seed: int = 0) -> dict:
    """topic -> message, covering the types the nodes exchange."""
    return {
        "/sample/cloud": conv.array_to_cloud(cloud_columns(seed), header()),
        "/sample/image": conv.rgb_to_image(rgb_image(seed), header("CAM_FRONT")),
        "/sample/objects": cdr.read_back(box_messages.boxes_to_detections(boxes(seed), DETECTION_CLASSES, header()),
                                         Detection3DArray),
        "/sample/velocities": box_messages.boxes_to_velocities(boxes(seed), header()),
        "/sample/map": conv.probability_to_grid(probability_map(seed), GRID, header()),
    }
