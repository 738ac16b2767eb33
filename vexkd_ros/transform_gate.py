"""Triggers held until TF can place them, ROS-free: what tf2's MessageFilter does for
Autoware's nodes.

A localiser often publishes the pose for a cloud's stamp after the cloud (tens to hundreds of
milliseconds later). Run at once, such a trigger would lose its past sweeps and its cameras
off the trigger time. So a trigger that needs a transform waits here until `/tf` knows
`fixed_frame <- its frame` at its stamp, or until `tf_timeout` has passed, and then goes to the
worker. Waiting happens here, not in the worker: triggers that arrive meanwhile are held
too, so a lagging TF delays the answers by its lag but never blocks newer inputs or thins
them out. The queue is bounded: past `capacity` the oldest is released to be superseded.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item")


class KnownTransforms(Protocol):
    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool: ...


@dataclass(frozen=True)
class Placement:
    """The transform a trigger needs: `target` <- `source` at `stamp_ns`."""

    target: str
    source: str
    stamp_ns: int


@dataclass
class _Held(Generic[Item]):
    item: Item
    placement: Placement
    deadline: float  # time.monotonic() after which the item goes without its transform


class TransformGate(Generic[Item]):
    def __init__(self, tf: KnownTransforms, capacity: int = 64):
        self.tf, self.capacity = tf, capacity
        self._held: collections.deque[_Held[Item]] = collections.deque()
        self._lock = threading.Lock()

    def offer(self, item: Item, placement: Placement | None, timeout_s: float, now: float) -> list[Item]:
        """Hold `item` until its placement is known (None: it needs none); returns the items
        released by this offer, oldest first."""
        with self._lock:
            self._held.append(_Held(item, placement, now + timeout_s) if placement else _Held(item, None, now))
            released = self._release(now)
            while len(self._held) > self.capacity:
                released.append(self._held.popleft().item)
            return released

    def release(self, now: float) -> list[Item]:
        """Items whose transform is known now or whose wait is over, and every item older than
        the newest of them (a newer input supersedes it), oldest first."""
        with self._lock:
            return self._release(now)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def __len__(self) -> int:
        return len(self._held)

    def _release(self, now: float) -> list[Item]:
        ready = [index for index, held in enumerate(self._held) if self._ready(held, now)]
        if not ready:
            return []
        return [self._held.popleft().item for _ in range(ready[-1] + 1)]

    def _ready(self, held: _Held[Item], now: float) -> bool:
        placement = held.placement
        return placement is None or now >= held.deadline or \
            self.tf.can_transform(placement.target, placement.source, placement.stamp_ns)
