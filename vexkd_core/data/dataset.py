"""Training data: samples augmented deterministically per (seed, epoch, index).

Because augmentation and order derive only from (seed, epoch, index), a resumed or
multi-process run sees exactly the data an uninterrupted single-process run would.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler

from vexkd_core.config import Config
from vexkd_core.structures import BEVGrid

from .nuscenes_source import NuScenesSource
from .preprocess import Augmentation, ModelInputs, Targets, collate, preprocess
from .sample_cache import SampleCache

# The map is read around the ego larger than the model's grid, so rotated crops stay full.
MAP_SOURCE_MARGIN = 1.5


def map_source_grid(config: Config, augmented: bool) -> BEVGrid:
    grid = config.map_grid
    return BEVGrid.centered(grid.half_extent_m * (MAP_SOURCE_MARGIN if augmented else 1.0), grid.resolution_m)


def model_source(dataroot, version: str, split: str | None, config: Config, augmented: bool,
                 nusc=None) -> NuScenesSource:
    """The samples a model of `config` reads: its LiDAR sweeps, its map grid with room for
    the augmentation's rotation when `augmented`, and images decoded no larger than its
    camera input needs."""
    return NuScenesSource(dataroot, version, split, config.model.lidar.sweeps, map_source_grid(config, augmented),
                          nusc=nusc, input_width=config.model.camera.input_width)


class TrainingSet(Dataset):
    def __init__(self, source: NuScenesSource, config: Config, augment: bool):
        self.source, self.config, self.augment = source, config, augment
        self.epoch = 0
        self._cache = SampleCache(config.train.sample_cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[ModelInputs, Targets]:
        sample = self._cache.get(index)
        if sample is None:
            sample = self.source.sample(index)
            self._cache.put(index, sample)
        rng = np.random.default_rng([self.config.train.seed, self.epoch, index])
        augmentation = Augmentation.random(self.config.augment, rng) if self.augment else Augmentation()
        return preprocess(sample, self.config, augmentation, rng if self.augment else None)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def batches_per_epoch(self) -> int:
        return max(1, (self.size // self.world_size) // self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 17]).permutation(self.size)
        per_rank = (self.size // self.world_size) or 1
        shard = np.resize(order, per_rank * self.world_size)[self.rank::self.world_size][:per_rank]
        usable = self.batches_per_epoch() * self.batch_size
        shard = np.resize(shard, usable)  # tiny datasets repeat to fill one batch
        return iter(shard[self.skip_batches * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size


def collate_training(items: list[tuple[ModelInputs, Targets]]):
    return collate([inputs for inputs, _ in items]), [targets for _, targets in items]
