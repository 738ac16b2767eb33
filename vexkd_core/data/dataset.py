"""Training data: samples augmented deterministically per (seed, epoch, index).

Because augmentation and order derive only from (seed, epoch, index), a resumed or
multi-process run sees exactly the data an uninterrupted single-process run would.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler

from vexkd_core.config import AugmentConfig, Config
from vexkd_core.structures import BEVGrid

from .gt_paste import GTPaster
from .nuscenes_source import DatasetError, NuScenesSource
from .preprocess import Augmentation, ModelInputs, Targets, collate, preprocess
from .sample import without_sensor
from .sample_cache import SampleCache

# The map is read around the ego larger than the model's grid, so rotated crops stay full:
# at least this much larger, more where the augmentation reaches further (map_source_margin).
MAP_SOURCE_MARGIN = 1.5
# GT-paste and sensor dropout draw from their own streams, so turning either on leaves the
# augmentation as it was.
PASTE_STREAM = 29
DROPOUT_STREAM = 31


def map_source_grid(config: Config, augmented: bool) -> BEVGrid:
    grid = config.map_grid
    margin = map_source_margin(config.augment, grid.half_extent_m) if augmented else 1.0
    return BEVGrid.centered(grid.half_extent_m * margin, grid.resolution_m)


def map_source_margin(augment: AugmentConfig, half_extent_m: float) -> float:
    """How much larger than the map grid the source map is read, so that no augmentation
    draw reaches past its edge: a square rotated by r reaches (cos r + sin r) of its half
    width (sqrt 2 at most), a translation of three standard deviations per axis moves it up
    to sqrt 2 times that, and the smallest scale stretches both."""
    angle = np.radians(min(abs(augment.rotation_deg), 45.0))
    shift = np.sqrt(2.0) * 3 * augment.translation_std_m / half_extent_m
    reach = (np.cos(angle) + np.sin(angle) + shift) / min(augment.scale)
    return max(MAP_SOURCE_MARGIN, float(reach))


def model_source(dataroot, version: str, split: str | None, config: Config, augmented: bool,
                 nusc=None) -> NuScenesSource:
    """The samples a model of `config` reads: its LiDAR sweeps, its map grid with room for
    the augmentation's rotation when `augmented`, and images decoded no larger than its
    camera input needs."""
    return NuScenesSource(dataroot, version, split, config.model.lidar.sweeps, map_source_grid(config, augmented),
                          nusc=nusc, input_width=config.model.camera.input_width)


def require_map_ground_truth(source: NuScenesSource, config: Config) -> None:
    """Refuse, before the first step, to train a map head (train.tasks map or both) on samples
    without map ground truth; a detection-only model trains on them."""
    if "segmentation" in config.train.task_names and source.maps_missing:
        raise DatasetError(f"a model of train.tasks={config.train.tasks} learns from map ground truth, which this "
                           f"dataset lacks: {source.maps_missing}; without it only detection models train "
                           f"(--set train.tasks=detection)")


class TrainingSet(Dataset):
    """Samples of `source`, or of `indices` into it (CBGS repeats some and leaves others out),
    GT-pasted by `paster` before augmentation when given. With `sensor_dropout` p, a sample
    loses its LiDAR with probability p / 2 and its cameras with p / 2, exactly as a rig with
    that sensor missing delivers it (`without_sensor`, what `eval --drop-sensor` feeds)."""

    def __init__(self, source: NuScenesSource, config: Config, augment: bool, indices: np.ndarray | None = None,
                 paster: GTPaster | None = None, sensor_dropout: float = 0.0):
        if not 0.0 <= sensor_dropout <= 1.0:
            raise ValueError(f"sensor dropout must be a probability in [0, 1], not {sensor_dropout}")
        self.source, self.config, self.augment = source, config, augment
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        self.paster, self.sensor_dropout = paster, sensor_dropout
        self.epoch = 0
        self._cache = SampleCache(config.train.sample_cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, position: int) -> tuple[ModelInputs, Targets]:
        index = int(self.indices[position])
        sample = self._cache.get(index)
        if sample is None:
            sample = self.source.sample(index)
            self._cache.put(index, sample)
        # Seeded by position, so a sample CBGS repeats is augmented and pasted differently each time.
        rng = np.random.default_rng([self.config.train.seed, self.epoch, position])
        if self.paster is not None and self.paster.active(self.epoch):
            sample = self.paster.paste(sample, np.random.default_rng([self.config.train.seed, self.epoch, position,
                                                                      PASTE_STREAM]))
        if self.sensor_dropout > 0:
            draw = np.random.default_rng([self.config.train.seed, self.epoch, position, DROPOUT_STREAM]).random()
            if draw < self.sensor_dropout:
                sample = without_sensor(sample, "lidar" if draw < self.sensor_dropout / 2 else "camera")
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
