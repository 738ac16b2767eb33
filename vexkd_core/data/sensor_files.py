"""Sensor payloads as the dataset reader and the ROS nodes both decode them.

Images: a JPEG can be decoded at 1/2, 1/4 or 1/8 scale for a fraction of the cost (libjpeg
skips the high DCT coefficients), which is worth it when the model input is at most half
the image anyway. A reduced image comes with intrinsics scaled to it, so a CameraView's K
always describes the pixels it carries and nothing downstream needs to know the factor.

Point clouds: the nuScenes `.pcd.bin` layout, five float32 per point.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

POINT_FLOATS = 5  # x, y, z, intensity, ring index
POINT_BYTES = POINT_FLOATS * np.dtype(np.float32).itemsize  # one point record: 20 bytes
_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


class DatasetError(ValueError):
    """The dataset is missing or not in the shape nuScenes code expects."""


def decode_reduction(image_width: int, input_width: int) -> int:
    """The largest decode reduction (1, 2, 4 or 8) that leaves the image at least as wide as
    the model input, so the resize to the input never has to upsample."""
    if input_width <= 0:  # no model input to fit: full resolution
        return 1
    return max((f for f in _REDUCED_FLAGS if image_width // f >= input_width), default=1)


def decode_image(encoded: np.ndarray, reduction: int = 1) -> np.ndarray | None:
    """HxWx3 uint8 RGB from JPEG/PNG bytes (a uint8 array), `reduction` times smaller on each
    side; None when the bytes do not decode."""
    bgr = cv2.imdecode(encoded, _REDUCED_FLAGS[reduction])
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def reduce_image(rgb: np.ndarray, reduction: int) -> np.ndarray:
    """An already decoded (raw) image `reduction` times smaller, area-averaged, as
    decode_image's reduced JPEG decode gives it (raw Image messages on the ROS side)."""
    if reduction == 1:
        return rgb
    height, width = rgb.shape[:2]
    return cv2.resize(rgb, (-(-width // reduction), -(-height // reduction)), interpolation=cv2.INTER_AREA)


def reduced_intrinsics(intrinsics: np.ndarray, reduction: int) -> np.ndarray:
    """K of the image decoded `reduction` times smaller. Pixel centres sit at integer
    coordinates (as cv2.warpAffine samples them) and a reduced pixel covers `reduction`
    full-resolution ones, so x_reduced = (x - (reduction - 1) / 2) / reduction."""
    if reduction == 1:
        return intrinsics
    scale = 1.0 / reduction
    offset = (scale - 1.0) / 2
    return np.array([[scale, 0.0, offset], [0.0, scale, offset], [0.0, 0.0, 1.0]]) @ intrinsics


def read_image(path: Path, reduction: int = 1) -> np.ndarray:
    """A camera image file decoded as `decode_image` does; DatasetError when it cannot be."""
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DatasetError(f"camera image {path} is missing or unreadable") from None
    image = decode_image(encoded, reduction)
    if image is None:
        raise DatasetError(f"camera image {path} is missing or unreadable")
    return image


def read_points(path: Path) -> np.ndarray:
    """(N, 5) float32 of a nuScenes `.pcd.bin`; DatasetError for a missing or misshapen file.

    Read as bytes: as float32, np.fromfile would silently drop 1-3 trailing bytes of a
    truncated or padded file and return whole points."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DatasetError(f"point cloud {path} is missing or unreadable") from None
    if raw.size % POINT_BYTES:
        raise DatasetError(f"{path} is not a nuScenes point cloud: {raw.size} bytes is not a whole number of "
                           f"{POINT_BYTES}-byte points ({POINT_FLOATS} float32)")
    return raw.view(np.float32).reshape(-1, POINT_FLOATS)
