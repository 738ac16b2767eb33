"""Wall time per named stage: the models, `vexkd-train eval` and the ROS pipeline time their
stages with one clock, so their numbers compare."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class StageTimer:
    """Wall time per stage, accumulated over calls (synchronising CUDA first)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def measure(self, name: str, function, *args, on_device: bool = True):
        """`on_device` False: a host-only stage, timed without synchronising CUDA (which would
        wait for the network another thread runs meanwhile)."""
        synchronize = on_device and torch.cuda.is_available()
        if synchronize:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = function(*args)
        if synchronize:
            torch.cuda.synchronize()
        self.seconds.setdefault(name, []).append(time.perf_counter() - started)
        return result
