"""A small transform buffer fed from /tf and /tf_static (tf2_ros is not on PyPI).

Frames form a tree: each child has one parent. Dynamic edges keep a short history and are
interpolated between stamps (linear translation, slerp rotation), never extrapolated; an
exact stamp returns the published transform bit for bit.
"""
from __future__ import annotations

import bisect
import threading
import time

import numpy as np
from tf2_msgs.msg import TFMessage

from vexkd_core.geometry import invert_transform, matrix_to_quaternion, quaternion_to_matrix

from .conversions import stamp_to_ns, transform_to_matrix


class TransformError(LookupError):
    """A transform that the buffer cannot provide (unknown frame, or a time outside its history)."""


def _slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / np.sin(angle)


class _Edge:
    def __init__(self, parent: str):
        self.parent = parent
        self.stamps: list[int] = []
        self.matrices: list[np.ndarray] = []

    def add(self, stamp_ns: int, matrix: np.ndarray, history_ns: int) -> None:
        index = bisect.bisect_left(self.stamps, stamp_ns)
        if index < len(self.stamps) and self.stamps[index] == stamp_ns:
            self.matrices[index] = matrix
        else:
            self.stamps.insert(index, stamp_ns)
            self.matrices.insert(index, matrix)
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - history_ns)
        del self.stamps[:cut], self.matrices[:cut]

    def at(self, stamp_ns: int, child: str) -> np.ndarray:
        index = bisect.bisect_left(self.stamps, stamp_ns)
        if index < len(self.stamps) and self.stamps[index] == stamp_ns:
            return self.matrices[index]
        if index == 0 or index == len(self.stamps):
            span = f"{self.stamps[0] * 1e-9:.3f}..{self.stamps[-1] * 1e-9:.3f} s"
            raise TransformError(f"no transform {self.parent} -> {child} at {stamp_ns * 1e-9:.3f} s "
                                 f"(buffer holds {span})")
        t0, t1 = self.stamps[index - 1], self.stamps[index]
        m0, m1 = self.matrices[index - 1], self.matrices[index]
        fraction = (stamp_ns - t0) / (t1 - t0)
        matrix = np.eye(4)
        matrix[:3, :3] = quaternion_to_matrix(_slerp(matrix_to_quaternion(m0[:3, :3]),
                                                     matrix_to_quaternion(m1[:3, :3]), fraction))
        matrix[:3, 3] = (1 - fraction) * m0[:3, 3] + fraction * m1[:3, 3]
        return matrix


class TransformBuffer:
    def __init__(self, history_s: float = 10.0):
        self.history_ns = int(history_s * 1e9)
        self._static: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, parent <- child)
        self._dynamic: dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def add(self, msg: TFMessage, static: bool) -> None:
        with self._lock:
            for transform in msg.transforms:  # one message may hold several stamps of one edge
                parent, child = transform.header.frame_id, transform.child_frame_id
                stamp_ns, matrix = stamp_to_ns(transform.header.stamp), transform_to_matrix(transform)
                if static:
                    self._static[child] = (parent, matrix)
                    continue
                edge = self._dynamic.get(child)
                if edge is None or edge.parent != parent:  # a re-parented frame starts a new history
                    edge = self._dynamic[child] = _Edge(parent)
                edge.add(stamp_ns, matrix, self.history_ns)

    def _to_root(self, frame: str, stamp_ns: int) -> tuple[str, np.ndarray]:
        """(root frame, root <- frame) at the given time."""
        matrix, seen = np.eye(4), set()
        while frame not in seen:
            seen.add(frame)
            if frame in self._static:
                parent, edge = self._static[frame]
            elif frame in self._dynamic:
                parent, edge = self._dynamic[frame].parent, self._dynamic[frame].at(stamp_ns, frame)
            else:
                return frame, matrix
            matrix, frame = edge @ matrix, parent
        raise TransformError(f"the transform tree has a loop through '{frame}'")

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """4x4 mapping `source` coordinates into `target`, both at `stamp_ns`."""
        return self.lookup_across_time(target, stamp_ns, source, stamp_ns, fixed=None)

    def wait_for(self, target: str, source: str, stamp_ns: int, timeout_s: float) -> bool:
        """True once `target` <- `source` at `stamp_ns` is known; False after `timeout_s`.

        /tf and a sensor message with the same stamp travel on different topics; the sensor
        message may win the race by a millisecond.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.lookup(target, source, stamp_ns)
                return True
            except TransformError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)

    def lookup_across_time(self, target: str, target_ns: int, source: str, source_ns: int,
                           fixed: str | None) -> np.ndarray:
        """`target` at `target_ns` <- `source` at `source_ns`, through a frame fixed in the world.

        This is how a past sweep or a camera image taken a few milliseconds off the trigger is
        moved into the trigger's frame: the vehicle moved in between, the world did not.
        """
        with self._lock:
            source_root, root_from_source = self._to_root(source, source_ns)
            target_root, root_from_target = self._to_root(target, target_ns)
        if source_root != target_root:
            raise TransformError(f"frames '{target}' and '{source}' are not connected "
                                 f"(roots '{target_root}' and '{source_root}')")
        if fixed is not None and source_ns != target_ns and fixed != source_root:
            raise TransformError(f"fixed frame '{fixed}' is not the root '{source_root}' of '{source}'")
        return invert_transform(root_from_target) @ root_from_source
