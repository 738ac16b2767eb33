"""Class-balanced resampling of training samples (CBGS; mmdet3d's CBGSDataset).

Each class c has the list S_c of samples holding at least one of its boxes; a sample is
in every list of its classes. With D = sum |S_c| and K classes, class c gets
int(|S_c| * (1/K) / (|S_c| / D)) draws with replacement from S_c, about D / K each, so
rare classes' samples repeat and frequent ones' thin out. Samples without boxes drop out.
"""
from __future__ import annotations

import numpy as np

from vexkd_core.classes import DETECTION_CLASSES

from .nuscenes_source import NuScenesSource

CBGS_STREAM = 23  # keeps the resampling's random stream apart from the epoch orders'


def sample_classes(source: NuScenesSource) -> list[set[int]]:
    """The detection classes of each key frame's boxes, from the annotation tables alone."""
    return [{DETECTION_CLASSES.index(name) for _, name in source._annotations(source.nusc.get("sample", token))}
            for token in source.tokens]


def balanced_indices(classes: list[set[int]], num_classes: int, seed: int) -> np.ndarray:
    """Sample indices after class-balanced resampling, in class order (the sampler shuffles)."""
    per_class = [[index for index, labels in enumerate(classes) if label in labels] for label in range(num_classes)]
    duplicated = sum(len(samples) for samples in per_class)
    if duplicated == 0:  # nothing annotated: nothing to balance
        return np.arange(len(classes))
    rng = np.random.default_rng([seed, CBGS_STREAM])
    share = 1.0 / num_classes
    drawn = [rng.choice(samples, int(len(samples) * (share / (len(samples) / duplicated))))
             for samples in per_class if samples]  # a class no sample holds cannot be balanced
    return np.concatenate(drawn).astype(np.int64)
