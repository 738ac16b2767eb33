"""A small transform buffer fed from /tf and /tf_static (tf2_ros is not on PyPI).

Frames form a tree: each child has one parent. Dynamic edges keep a time window of history
and are interpolated between stamps (linear translation, slerp rotation), never
extrapolated; an exact stamp returns the published transform bit for bit. As in tf2, a
lookup goes through the two frames' common ancestor, and any frame of the tree can be the
fixed frame of a lookup across time.

Unlike tf2 (whose window follows the newest stamp, so one stamp an hour ahead deletes
everything after it), one stamp far outside the window is held aside until a second one
confirms the jump: an outlier is ignored, a real jump (a looped bag, a reset /clock) clears
the edge's history and is reported.
"""
from __future__ import annotations

import bisect
import math
import threading
from typing import NamedTuple

import numpy as np
from tf2_msgs.msg import TFMessage

from vexkd_core.geometry import invert_transform, matrix_to_quaternion, quaternion_to_matrix

from .conversions import stamp_to_ns, transform_to_matrix

MAX_STAMPS_PER_EDGE = 10_000  # the window bounds the history in time; this bounds a flood within it


class TransformError(LookupError):
    """A transform that the buffer cannot provide (unknown frame, or a time outside its history)."""


class TransformNote(NamedTuple):
    """Something the buffer did with a /tf message that its user should log."""
    kind: str  # "rejected" (a malformed transform, not stored) or "time jump" (an edge's history cleared)
    text: str


def _slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / np.sin(angle)


def malformed(transform) -> str | None:
    """Why a TransformStamped cannot be stored (tf2 refuses the same), or None."""
    parent, child = transform.header.frame_id, transform.child_frame_id
    if not parent or not child:
        return f"transform '{parent}' -> '{child}' has an empty frame id"
    if parent == child:
        return f"transform '{parent}' -> '{child}' maps a frame to itself"
    t, q = transform.transform.translation, transform.transform.rotation
    if not all(math.isfinite(v) for v in (t.x, t.y, t.z)):
        return f"transform '{parent}' -> '{child}' has a non-finite translation"
    norm = math.sqrt(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z)
    if not math.isfinite(norm) or norm < 1e-6:
        return f"transform '{parent}' -> '{child}' has a zero or non-finite quaternion"
    return None


class _Edge:
    """One child's dynamic transforms over a window of `history_ns` behind its newest stamp."""

    def __init__(self, parent: str, history_ns: int):
        self.parent, self.history_ns = parent, history_ns
        self.stamps: list[int] = []
        self.matrices: list[np.ndarray] = []
        self._held: tuple[int, np.ndarray] | None = None  # a stamp outside the window, until confirmed

    def add(self, stamp_ns: int, matrix: np.ndarray) -> int | None:
        """Store one transform; returns the jump (ns, negative: back in time) when the
        history was cleared because two stamps in a row lay outside the window, else None."""
        if not self.stamps or abs(stamp_ns - self.stamps[-1]) <= self.history_ns:
            self._held = None
            self._insert(stamp_ns, matrix)
            return None
        held, self._held = self._held, (stamp_ns, matrix)
        if held is None or abs(stamp_ns - held[0]) > self.history_ns:
            return None  # an outlier, as far as we know yet
        jump = stamp_ns - self.stamps[-1]
        self.stamps, self.matrices, self._held = [], [], None
        self._insert(*held)
        self._insert(stamp_ns, matrix)
        return jump

    def _insert(self, stamp_ns: int, matrix: np.ndarray) -> None:
        index = bisect.bisect_left(self.stamps, stamp_ns)
        if index < len(self.stamps) and self.stamps[index] == stamp_ns:
            self.matrices[index] = matrix
        else:
            self.stamps.insert(index, stamp_ns)
            self.matrices.insert(index, matrix)
        cut = max(bisect.bisect_left(self.stamps, self.stamps[-1] - self.history_ns),
                  len(self.stamps) - MAX_STAMPS_PER_EDGE)
        del self.stamps[:cut], self.matrices[:cut]

    def at(self, stamp_ns: int, child: str) -> np.ndarray:
        index = bisect.bisect_left(self.stamps, stamp_ns)
        if index < len(self.stamps) and self.stamps[index] == stamp_ns:
            return self.matrices[index]
        if index == 0 or index == len(self.stamps):
            span = f"{self.stamps[0] * 1e-9:.3f}..{self.stamps[-1] * 1e-9:.3f} s" if self.stamps else "nothing"
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

    def add(self, msg: TFMessage, static: bool) -> list[TransformNote]:
        """Store every well-formed transform of the message; notes say what was refused or cleared."""
        notes = []
        with self._lock:
            for transform in msg.transforms:  # one message may hold several stamps of one edge
                problem = malformed(transform)
                if problem is not None:
                    notes.append(TransformNote("rejected", f"{problem}: ignored"))
                    continue
                parent, child = transform.header.frame_id, transform.child_frame_id
                stamp_ns, matrix = stamp_to_ns(transform.header.stamp), transform_to_matrix(transform)
                if static:
                    self._static[child] = (parent, matrix)
                    continue
                edge = self._dynamic.get(child)
                if edge is None or edge.parent != parent:  # a re-parented frame starts a new history
                    edge = self._dynamic[child] = _Edge(parent, self.history_ns)
                jump = edge.add(stamp_ns, matrix)
                if jump is not None:
                    notes.append(TransformNote("time jump", f"/tf {parent} -> {child} jumped "
                                               f"{'back' if jump < 0 else 'ahead'} {abs(jump) * 1e-9:.1f} s: "
                                               "its earlier history is cleared"))
        return notes

    def clear_dynamic(self) -> None:
        """Forget every /tf transform (the ROS clock jumped back); /tf_static stays."""
        with self._lock:
            self._dynamic.clear()

    def _parent(self, frame: str) -> str | None:
        if frame in self._static:
            return self._static[frame][0]
        edge = self._dynamic.get(frame)
        return edge.parent if edge is not None else None

    def _ancestors(self, frame: str) -> list[str]:
        """`frame`, its parent, ... up to the root of its tree."""
        chain = [frame]
        while (parent := self._parent(chain[-1])) is not None:
            if parent in chain:
                raise TransformError(f"the transform tree has a loop through '{parent}'")
            chain.append(parent)
        return chain

    def _to_ancestor(self, frame: str, ancestor: str, stamp_ns: int) -> np.ndarray:
        """ancestor <- frame at the given time, from the edges between them only."""
        matrix = np.eye(4)
        while frame != ancestor:
            if frame in self._static:
                parent, edge = self._static[frame]
            else:
                parent, edge = self._dynamic[frame].parent, self._dynamic[frame].at(stamp_ns, frame)
            matrix, frame = edge @ matrix, parent
        return matrix

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """target <- source at one time, through their common ancestor (the lock is held)."""
        source_chain, target_chain = self._ancestors(source), self._ancestors(target)
        common = next((frame for frame in source_chain if frame in target_chain), None)
        if common is None:
            raise TransformError(f"frames '{target}' and '{source}' are not connected "
                                 f"(roots '{target_chain[-1]}' and '{source_chain[-1]}')")
        return invert_transform(self._to_ancestor(target, common, stamp_ns)) @ \
            self._to_ancestor(source, common, stamp_ns)

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """4x4 mapping `source` coordinates into `target`, both at `stamp_ns`."""
        with self._lock:
            return self._lookup(target, source, stamp_ns)

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        """Whether `target` <- `source` at `stamp_ns` is known now (never waits)."""
        try:
            self.lookup(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    def lookup_across_time(self, target: str, target_ns: int, source: str, source_ns: int,
                           fixed: str | None) -> np.ndarray:
        """`target` at `target_ns` <- `source` at `source_ns`, through `fixed`, a frame that
        does not move in between (None: the source's root).

        This is how a past sweep or a camera image taken a few milliseconds off the trigger is
        moved into the trigger's frame: the vehicle moved in between, the world did not.
        """
        with self._lock:
            if source_ns == target_ns:
                return self._lookup(target, source, source_ns)
            fixed = self._ancestors(source)[-1] if fixed is None else fixed
            fixed_from_source = self._lookup(fixed, source, source_ns)
            fixed_from_target = self._lookup(fixed, target, target_ns)
        return invert_transform(fixed_from_target) @ fixed_from_source
