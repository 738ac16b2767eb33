"""Decoded Samples kept for reuse, bounded in bytes.

A real nuScenes sample is ~30 MB decoded and a split has ~28k of them, so an unbounded
cache grows with the dataset (in every DataLoader worker). This one holds at most its
budget and evicts the least recently used sample; a budget of 0 keeps nothing.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .sample import Sample


def _large_arrays(sample: Sample) -> list[np.ndarray]:
    """Points, images and map masks: all but a few kB of a Sample."""
    arrays = [sample.points, sample.map_masks, *(view.image for view in sample.cameras)]
    return [array for array in arrays if array is not None]


def sample_nbytes(sample: Sample) -> int:
    return sum(array.nbytes for array in _large_arrays(sample))


def _read_only(sample: Sample) -> Sample:
    """A cached sample is handed out again: writing into it would change later epochs."""
    for array in _large_arrays(sample):
        array.flags.writeable = False
    return sample


class SampleCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._samples: OrderedDict[int, tuple[Sample, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._samples)

    def get(self, index: int) -> Sample | None:
        entry = self._samples.get(index)
        if entry is None:
            return None
        self._samples.move_to_end(index)
        return entry[0]

    def put(self, index: int, sample: Sample) -> None:
        """Keep `sample` if it fits the budget at all, evicting the least recently used."""
        size = sample_nbytes(sample)
        if size > self.budget_bytes or index in self._samples:
            return
        while self.nbytes + size > self.budget_bytes:
            _, (_, evicted) = self._samples.popitem(last=False)
            self.nbytes -= evicted
        self._samples[index] = (_read_only(sample), size)
        self.nbytes += size

