"""Threads that work on the newest trigger only, ROS-free.

A trigger offered while an older one still waits replaces it (and is counted as a drop), so
a model slower than its sensor never builds a backlog: the answer to the newest input comes
one model run after it, never a queue later.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


class NewestWorker(Generic[Item]):
    def __init__(self, handle: Callable[[Item], None], name: str):
        self._handle = handle
        self._pending: Item | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self.offered = 0
        self.dropped = 0  # offered items replaced before the thread took them
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def offer(self, item: Item) -> None:
        """File `item` as the newest; the thread takes it after the next release()."""
        with self._wake:
            if self._pending is not None:
                self.dropped += 1
            self._pending, self.offered = item, self.offered + 1

    def release(self) -> None:
        # Separate from offer(): a node releases the thread only after its executor has handled
        # every message that arrived together with the trigger.
        with self._wake:
            self._wake.notify()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                item, self._pending = self._pending, None
            self._handle(item)


class TwoStageWorker(Generic[Item, Prepared]):
    """Two NewestWorkers in a row: `prepare` on one thread, `finish` of what it returned on
    another, so a frame is prepared while the one before it is finished.

    A node's frame is half preparation (assembling the sweeps, preprocessing, the network's
    inputs) and half network and decoding; run in series they took 57 ms of a LiDAR stream's
    50 ms between clouds, each half well under it. Each stage keeps only its newest input, so
    neither builds a backlog: prepare() returns what finish() takes, or None for nothing.
    """

    def __init__(self, prepare: Callable[[Item], Prepared | None], finish: Callable[[Prepared], None], name: str):
        self._prepare = prepare
        self.finishing: NewestWorker[Prepared] = NewestWorker(finish, f"{name}-finish")
        self.preparing: NewestWorker[Item] = NewestWorker(self._prepare_and_pass, f"{name}-prepare")

    @property
    def offered(self) -> int:
        return self.preparing.offered

    @property
    def dropped(self) -> int:
        """Items replaced before either stage took them."""
        return self.preparing.dropped + self.finishing.dropped

    @property
    def stopping(self) -> bool:
        return self.preparing.stopping

    def offer(self, item: Item) -> None:
        self.preparing.offer(item)

    def release(self) -> None:
        self.preparing.release()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.preparing.stop(timeout_s)
        self.finishing.stop(timeout_s)

    def _prepare_and_pass(self, item: Item) -> None:
        prepared = self._prepare(item)
        if prepared is not None:
            self.finishing.offer(prepared)
            self.finishing.release()
