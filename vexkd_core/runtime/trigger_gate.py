"""Triggers held until what they need has arrived, ROS-free: what tf2's MessageFilter and
Autoware's camera synchronisation do for its nodes.

Two things a trigger may wait for (Pipeline.ready says which, and for how long at most):
- the transform of its stamp: a localiser often publishes the pose for a cloud's stamp after
  the cloud (tens to hundreds of milliseconds later); run at once, the trigger would lose its
  past sweeps and its cameras off the trigger time;
- the other cameras of its frame: real cameras fire one after another as the LiDAR sweeps
  past them (over ~43 ms on nuScenes, CAM_FRONT second), so at CAM_FRONT's arrival most of
  its frame is still on the way.
Waiting happens here, not in the worker: triggers that arrive meanwhile are held too, so a
lagging input delays the answers by its lag but never blocks newer inputs or thins them out.
The queue is bounded: past `capacity` the oldest is released to be superseded.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
# ready(waited_s): whether a held item may go, given how long it has waited (wall time)
Readiness = Callable[[float], bool]


@dataclass
class _Held(Generic[Item]):
    item: Item
    ready: Readiness
    since: float  # time.monotonic() when it was offered


class TriggerGate(Generic[Item]):
    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._held: collections.deque[_Held[Item]] = collections.deque()
        self._lock = threading.Lock()

    def offer(self, item: Item, ready: Readiness, now: float) -> list[Item]:
        """Hold `item` until ready(waited_s); returns the items this offer releases, oldest first."""
        with self._lock:
            self._held.append(_Held(item, ready, now))
            released = self._release(now)
            while len(self._held) > self.capacity:
                released.append(self._held.popleft().item)
            return released

    def release(self, now: float) -> list[Item]:
        """Items ready now, and every item older than the newest of them (a newer input
        supersedes it), oldest first."""
        with self._lock:
            return self._release(now)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def __len__(self) -> int:
        return len(self._held)

    def _release(self, now: float) -> list[Item]:
        ready = [index for index, held in enumerate(self._held) if held.ready(now - held.since)]
        if not ready:
            return []
        return [self._held.popleft().item for _ in range(ready[-1] + 1)]
