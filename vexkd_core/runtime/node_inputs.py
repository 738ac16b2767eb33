"""What the pipeline keeps between triggers: the last sweeps and camera frames, ROS-free.

For each trigger they assemble what the dataset reader builds: past sweeps moved through TF
into the trigger's frame with their age as the fifth point channel, and for each camera the
frame nearest the trigger (within `max_camera_delay`) with its extrinsics from TF and the
intrinsics of its last calibration. Frames are decoded lazily: a JPEG is decoded only when a
trigger uses it, and only after the size its header claims matched the calibration; a camera
whose CameraInfo has a distortion is undistorted to its pinhole K right after decoding.
"""
from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from vexkd_core.data.distortion import Distortion, Undistorter
from vexkd_core.data.sample import CAMERA_CHANNELS, CameraView
from vexkd_core.data.sensor_files import decode_reduction, reduced_intrinsics
from vexkd_core.data.sweeps import into_key_frame

CAMERA_FRAMES_KEPT = 4  # per camera: enough to choose the nearest of ~3 frames around a trigger


class Transforms(Protocol):
    """The TF the pipeline needs (vexkd_ros.tf_buffer.TransformBuffer); lookups raise LookupError."""

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool: ...

    def lookup_across_time(self, target: str, target_ns: int, source: str, source_ns: int,
                           fixed: str | None) -> np.ndarray: ...


@dataclass(frozen=True)
class Sweep:
    stamp_ns: int
    frame_id: str
    # (N, 4) float32 x, y, z, intensity in frame_id; without the ego's own returns once the
    # pipeline keeps it (Pipeline.add_sweep)
    points: np.ndarray


@dataclass(frozen=True)
class CameraFrame:
    """One received image, not decoded yet."""

    stamp_ns: int
    frame_id: str
    claimed_size: tuple[int, int] | None  # (width, height) its header says; None: unknown before decoding
    # decode(reduction): HxWx3 uint8 RGB, `reduction` (1, 2, 4, 8) times smaller on each side
    # (sensor_files.decode_reduction); raises ValueError with a one-line reason
    decode: Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Calibration:
    intrinsics: np.ndarray  # 3x3, checked invertible
    width: int
    height: int
    distortion: Distortion | None = None  # removed before the model sees the image; None: a pinhole

    def same_as(self, other: Calibration | None) -> bool:
        return other is not None and (self.width, self.height, self.distortion) == \
            (other.width, other.height, other.distortion) and np.array_equal(self.intrinsics, other.intrinsics)


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

    def points(self, key: Sweep, tf: Transforms, fixed_frame: str) -> tuple[np.ndarray, list[str]]:
        """(M, 5) points in the key sweep's frame, and a note for every past sweep left out."""
        with self._lock:
            past = [s for s in self._history if s.stamp_ns < key.stamp_ns][-self.sweeps:] if self.sweeps else []
        moves, notes = [(key.points, np.eye(4), 0.0)], []
        for sweep in reversed(past):
            try:
                to_key = tf.lookup_across_time(key.frame_id, key.stamp_ns, sweep.frame_id, sweep.stamp_ns, fixed_frame)
            except LookupError as error:
                notes.append(f"past sweep left out: {error}")
                continue
            moves.append((sweep.points, to_key, (key.stamp_ns - sweep.stamp_ns) * 1e-9))
        points = np.empty((sum(len(p) for p, _, _ in moves), 5), np.float32)
        start = 0
        for sweep_points, to_key, lag_s in moves:
            into_key_frame(sweep_points, to_key, lag_s, out=points[start:start + len(sweep_points)])
            start += len(sweep_points)
        return points, notes


class CameraCache:
    """Recent frames and the latest calibration of each of the 6 model cameras."""

    def __init__(self, input_width: int = 0):
        """`input_width`: the model's camera input width; images are decoded as the dataset
        reader decodes them for that model, at the largest reduction that still covers it."""
        self.input_width = input_width
        self._frames = [collections.deque(maxlen=CAMERA_FRAMES_KEPT) for _ in CAMERA_CHANNELS]
        self._calibration: list[Calibration | None] = [None] * len(CAMERA_CHANNELS)
        self._undistorters: list[Undistorter | None] = [None] * len(CAMERA_CHANNELS)
        self._lock = threading.Lock()
        # The six JPEGs decode side by side: cv2 releases the GIL while it decodes.
        self._decoders = ThreadPoolExecutor(min(len(CAMERA_CHANNELS), os.cpu_count() or 1),
                                            thread_name_prefix="camera-decode")

    def add_frame(self, index: int, frame: CameraFrame) -> None:
        with self._lock:
            frames = self._frames[index]
            if frames and frame.stamp_ns <= frames[-1].stamp_ns:
                frames.clear()  # time went backwards
            frames.append(frame)

    def set_calibration(self, index: int, calibration: Calibration | None) -> None:
        """None (an unusable CameraInfo) leaves the camera out until a valid one arrives: the
        newest calibration holds, and an older one may no longer be true. A distortion gets its
        remap table when the calibration changes, not with every CameraInfo (they repeat it)."""
        with self._lock:
            if calibration is not None and calibration.same_as(self._calibration[index]):
                return
            self._calibration[index] = calibration
            distortion = calibration.distortion if calibration is not None else None
            self._undistorters[index] = Undistorter(distortion) if distortion is not None else None

    def nearest(self, index: int, stamp_ns: int, max_delay_ns: int) -> CameraFrame | None:
        with self._lock:
            frames = list(self._frames[index])
        candidates = [(abs(f.stamp_ns - stamp_ns), i) for i, f in enumerate(frames)]
        candidates = [c for c in candidates if c[0] <= max_delay_ns]
        return frames[min(candidates)[1]] if candidates else None

    def all_settled(self, stamp_ns: int, max_delay_ns: int) -> bool:
        """Whether every camera's frame nearest `stamp_ns` (within max_delay_ns) has arrived."""
        return all(self._settled(index, stamp_ns, max_delay_ns) for index in range(len(CAMERA_CHANNELS)))

    def _settled(self, index: int, stamp_ns: int, max_delay_ns: int) -> bool:
        """A camera's frames come in stamp order, one a period: its nearest frame is known once
        one is stamped at or after `stamp_ns`, or once its next frame, a period after the
        newest, would lie farther away than the newest (a camera that fired just before the
        reference). The period is the median spacing of its recent frames."""
        with self._lock:
            stamps = [frame.stamp_ns for frame in self._frames[index]]
        if not stamps:
            return False
        newest = stamps[-1]
        if newest >= stamp_ns:
            return True
        if len(stamps) < 2:
            return False
        period = float(np.median(np.diff(stamps)))
        return stamp_ns - newest <= max_delay_ns and newest + period - stamp_ns > stamp_ns - newest

    def views(self, reference_frame: str, stamp_ns: int, max_delay_ns: int, tf: Transforms,
              fixed_frame: str) -> tuple[list[CameraView], list[str]]:
        """Six CameraViews (image None where a camera is missing) and a note for each one missing."""
        views, notes = [], []
        found = self._decoders.map(lambda index: self._view(index, CAMERA_CHANNELS[index], reference_frame, stamp_ns,
                                                            max_delay_ns, tf, fixed_frame), range(len(CAMERA_CHANNELS)))
        for index, (view, note) in enumerate(found):
            views.append(view)
            if note:
                notes.append(f"camera {index} ({CAMERA_CHANNELS[index]}) left out: {note}")
        return views, notes

    def _view(self, index, channel, reference_frame, stamp_ns, max_delay_ns, tf, fixed_frame):
        missing = CameraView(channel, None, np.eye(3), np.eye(4))
        with self._lock:
            calibration, undistort = self._calibration[index], self._undistorters[index]
        frame = self.nearest(index, stamp_ns, max_delay_ns)
        if frame is None:
            return missing, f"no image within {max_delay_ns * 1e-9:.3f} s of the trigger"
        if calibration is None:
            return missing, "no valid CameraInfo received"
        # Checked before decoding: a forged JPEG header would otherwise make cv2 allocate and fill its pixels first.
        if frame.claimed_size is not None and frame.claimed_size != (calibration.width, calibration.height):
            return missing, _size_mismatch(frame.claimed_size, calibration)
        reduction = decode_reduction(calibration.width, self.input_width)
        try:
            rgb = frame.decode(reduction)
        except ValueError as error:
            return missing, str(error)
        # A reduced decode rounds an odd side either way (JPEG up, other formats down).
        height, width = rgb.shape[:2]
        if abs(width - calibration.width / reduction) >= 1 or abs(height - calibration.height / reduction) >= 1:
            return missing, _size_mismatch((width * reduction, height * reduction), calibration)
        try:
            camera_to_reference = tf.lookup_across_time(reference_frame, stamp_ns, frame.frame_id, frame.stamp_ns,
                                                        fixed_frame)
        except LookupError as error:
            return missing, str(error)
        intrinsics = reduced_intrinsics(calibration.intrinsics, reduction)
        if undistort is not None:
            rgb = undistort(rgb, intrinsics)
        return CameraView(channel, rgb, intrinsics, camera_to_reference), None


def _size_mismatch(size: tuple[int, int], calibration: Calibration) -> str:
    return f"image is {size[0]}x{size[1]} but its CameraInfo says {calibration.width}x{calibration.height}"
