"""ROS messages -> the typed Sample every model input is made from.

The nodes keep the last sweeps and camera frames here and, for each trigger, assemble the
same `Sample` the dataset reader builds: past sweeps moved through TF into the trigger's
frame with their age as the fifth point channel, and for each camera the image nearest the
trigger (within `max_camera_delay`) with its extrinsics from TF and intrinsics from
CameraInfo. Conversions are lazy: JPEGs are decoded only for the frames a trigger uses.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from vexkd_core.data.sample import CAMERA_CHANNELS, CameraView, Sample
from vexkd_core.data.sweeps import sweep_in_key_frame

from .conversions import (MessageError, camera_info_to_intrinsics, compressed_to_rgb, encoded_image_size, image_to_rgb,
                          stamp_to_ns)
from .tf_buffer import TransformBuffer, TransformError

CAMERA_FRAMES_KEPT = 4  # per camera: enough to choose the nearest of ~3 frames around a trigger


@dataclass
class Sweep:
    stamp_ns: int
    frame_id: str
    points: np.ndarray  # (N, 4) float32 x, y, z, intensity in frame_id


class SweepHistory:
    """The trigger sweep and the `sweeps` sweeps before it, as received."""

    def __init__(self, sweeps: int):
        self.sweeps = sweeps
        self._history: collections.deque[Sweep] = collections.deque(maxlen=sweeps + 1)
        self._lock = threading.Lock()

    def add(self, sweep: Sweep) -> None:
        with self._lock:
            if self._history and sweep.stamp_ns <= self._history[-1].stamp_ns:
                self._history.clear()  # time went backwards (a looped bag): old sweeps no longer apply
            self._history.append(sweep)

    def points(self, key: Sweep, tf: TransformBuffer, fixed_frame: str) -> tuple[np.ndarray, list[str]]:
        """(M, 5) points in the key sweep's frame, and a note for every past sweep left out."""
        with self._lock:
            past = [s for s in self._history if s.stamp_ns < key.stamp_ns][-self.sweeps:] if self.sweeps else []
        clouds = [sweep_in_key_frame(key.points, np.eye(4), 0.0)]
        notes = []
        for sweep in reversed(past):
            try:
                to_key = tf.lookup_across_time(key.frame_id, key.stamp_ns, sweep.frame_id, sweep.stamp_ns, fixed_frame)
            except TransformError as error:
                notes.append(f"past sweep left out: {error}")
                continue
            clouds.append(sweep_in_key_frame(sweep.points, to_key, (key.stamp_ns - sweep.stamp_ns) * 1e-9))
        return np.concatenate(clouds), notes


@dataclass
class _Calibration:
    intrinsics: np.ndarray
    width: int
    height: int


class CameraCache:
    """Recent image messages and the latest CameraInfo of each of the 6 model cameras."""

    def __init__(self):
        self._frames = [collections.deque(maxlen=CAMERA_FRAMES_KEPT) for _ in CAMERA_CHANNELS]
        self._calibration: list[_Calibration | None] = [None] * len(CAMERA_CHANNELS)
        self._lock = threading.Lock()

    def add_image(self, index: int, msg: Image | CompressedImage) -> None:
        with self._lock:
            frames = self._frames[index]
            if frames and stamp_to_ns(msg.header.stamp) <= stamp_to_ns(frames[-1].header.stamp):
                frames.clear()  # time went backwards
            frames.append(msg)

    def add_info(self, index: int, msg: CameraInfo) -> None:
        """Raises MessageError for an unusable CameraInfo; the camera is then left out until a
        valid one arrives (the newest calibration holds, and an older one may no longer be true)."""
        try:
            calibration = _Calibration(camera_info_to_intrinsics(msg), msg.width, msg.height)
        except MessageError:
            calibration = None
            raise
        finally:
            with self._lock:
                self._calibration[index] = calibration

    def nearest(self, index: int, stamp_ns: int, max_delay_ns: int) -> Image | CompressedImage | None:
        with self._lock:
            frames = list(self._frames[index])
        candidates = [(abs(stamp_to_ns(m.header.stamp) - stamp_ns), i) for i, m in enumerate(frames)]
        candidates = [c for c in candidates if c[0] <= max_delay_ns]
        return frames[min(candidates)[1]] if candidates else None

    def views(self, reference_frame: str, stamp_ns: int, max_delay_ns: int, tf: TransformBuffer,
              fixed_frame: str) -> tuple[list[CameraView], list[str]]:
        """Six CameraViews (image None where a camera is missing) and a note for each one missing."""
        views, notes = [], []
        for index, channel in enumerate(CAMERA_CHANNELS):
            view, note = self._view(index, channel, reference_frame, stamp_ns, max_delay_ns, tf, fixed_frame)
            views.append(view)
            if note:
                notes.append(f"camera {index} ({channel}) left out: {note}")
        return views, notes

    def _view(self, index, channel, reference_frame, stamp_ns, max_delay_ns, tf, fixed_frame):
        missing = CameraView(channel, None, np.eye(3), np.eye(4))
        calibration = self._calibration[index]
        msg = self.nearest(index, stamp_ns, max_delay_ns)
        if msg is None:
            return missing, f"no image within {max_delay_ns * 1e-9:.3f} s of the trigger"
        if calibration is None:
            return missing, "no valid CameraInfo received"
        # The size a JPEG/PNG header claims is checked before decoding: a forged header would
        # otherwise make cv2 allocate and fill its pixels first.
        claimed = encoded_image_size(msg.data) if isinstance(msg, CompressedImage) else (msg.width, msg.height)
        if claimed is not None and claimed != (calibration.width, calibration.height):
            return missing, _size_mismatch(claimed, calibration)
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        except MessageError as error:
            return missing, str(error)
        if rgb.shape[:2] != (calibration.height, calibration.width):
            return missing, _size_mismatch((rgb.shape[1], rgb.shape[0]), calibration)
        try:
            camera_to_reference = tf.lookup_across_time(reference_frame, stamp_ns, msg.header.frame_id,
                                                        stamp_to_ns(msg.header.stamp), fixed_frame)
        except TransformError as error:
            return missing, str(error)
        return CameraView(channel, rgb, calibration.intrinsics, camera_to_reference), None


def _size_mismatch(size: tuple[int, int], calibration: _Calibration) -> str:
    return f"image is {size[0]}x{size[1]} but its CameraInfo says {calibration.width}x{calibration.height}"


def build_sample(token: str, stamp_ns: int, points: np.ndarray, cameras: list[CameraView]) -> Sample:
    """A sensor-only Sample (no ground truth) in the trigger's frame."""
    return Sample(token=token, timestamp_us=stamp_ns // 1000, points=points, cameras=cameras,
                  lidar_to_global=np.eye(4))
