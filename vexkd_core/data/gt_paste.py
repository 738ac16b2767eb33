"""GT-paste (mmdet3d's ObjectSample): objects of the GT database pasted into a training sample.

Each object is pasted where it was recorded (its box pose in its own sample's LiDAR
frame), as mmdet3d does, so its points keep their range, density and occlusion pattern.
Pasting adds LiDAR evidence only: there is no image of a pasted object, so the trainer
uses it only for models that read points.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import Config
from vexkd_core.structures import Boxes3D

from .gt_database import INDEX, GTDatabase, default_database_path, in_box, lidar_frame
from .nuscenes_source import DatasetError, NuScenesSource
from .sample import Sample

# mmdet3d's nuScenes sample_groups: how many objects of each class a sample holds after pasting.
SAMPLE_GROUPS: dict[str, int] = {"car": 2, "truck": 3, "construction_vehicle": 7, "bus": 4, "trailer": 6,
                                 "barrier": 2, "motorcycle": 6, "bicycle": 6, "pedestrian": 2, "traffic_cone": 2}


def bev_corners(boxes: Boxes3D) -> np.ndarray:
    """(N, 4, 2) ground-plane corners, counter-clockwise."""
    return boxes.corners()[:, :4, :2]


def bev_overlaps(candidate: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(M,) whether the (4, 2) rotated rectangle `candidate` overlaps each of `others` (M, 4, 2).

    Separating-axis test: two convex polygons are apart when their projections on one
    edge normal of either are disjoint. Shapes that only touch do not overlap.
    """
    if len(others) == 0:
        return np.zeros(0, dtype=bool)
    polygons = np.concatenate([candidate[None].repeat(len(others), 0)[:, None], others[:, None]], axis=1)
    edges = polygons[:, :, [1, 2]] - polygons[:, :, [0, 1]]  # two edge directions per rectangle
    axes = np.stack([-edges[..., 1], edges[..., 0]], axis=-1).reshape(len(others), 4, 2)
    projected = np.einsum("mpcd,mad->mpac", polygons, axes)  # (M, polygon, axis, corner)
    low, high = projected.min(axis=-1), projected.max(axis=-1)
    separated = (high[:, 0] <= low[:, 1]) | (high[:, 1] <= low[:, 0])
    return ~separated.any(axis=-1)


def concat_boxes(first: Boxes3D, second: Boxes3D) -> Boxes3D:
    fields = [np.concatenate([getattr(first, f.name), getattr(second, f.name)]) for f in dataclasses.fields(Boxes3D)]
    return Boxes3D(*fields)


@dataclass(frozen=True)
class GTPaster:
    database: GTDatabase
    until_epoch: int  # pasting stops at this epoch (the last epochs train on real scenes only)

    def active(self, epoch: int) -> bool:
        return epoch < self.until_epoch

    @cached_property
    def pools(self) -> list[np.ndarray]:
        """Database objects of each class (a real database has ~10^6; this is once per process)."""
        return [np.flatnonzero(self.database.boxes.label == label) for label in range(len(DETECTION_CLASSES))]

    def choose(self, boxes: Boxes3D, rng: np.random.Generator) -> np.ndarray:
        """Database objects to paste beside `boxes`: per class, up to its sample group less
        the objects of that class already there, drawn without replacement; any whose BEV box
        overlaps an existing or an already chosen one is dropped (not redrawn, as mmdet3d)."""
        taken = bev_corners(boxes)
        chosen = []
        for label, name in enumerate(DETECTION_CLASSES):
            pool = self.pools[label]
            wanted = min(SAMPLE_GROUPS[name] - int(np.sum(boxes.label == label)), len(pool))
            if wanted <= 0:
                continue
            for index in rng.choice(pool, wanted, replace=False):
                corners = bev_corners(self.database.boxes.select([index]))
                if not bev_overlaps(corners[0], taken).any():
                    taken = np.concatenate([taken, corners])
                    chosen.append(int(index))
        return np.array(chosen, dtype=np.int64)

    def paste(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The sample with chosen objects' boxes and points added and its own points inside
        their boxes removed; `sample` itself is left as it was."""
        chosen = self.choose(sample.boxes, rng)
        if len(chosen) == 0:
            return sample
        pasted = self.database.boxes.select(chosen)
        points = sample.points
        for index in range(len(pasted)):
            points = points[~in_box(points, pasted, index)]
        clouds = []
        for row, index in enumerate(chosen):
            cloud = self.database.points(index).copy()
            cloud[:, :3] = lidar_frame(cloud[:, :3].astype(np.float64), pasted.center[row], pasted.yaw[row])
            clouds.append(cloud)
        return dataclasses.replace(sample, points=np.concatenate(clouds + [points]).astype(np.float32),
                                   boxes=concat_boxes(sample.boxes, pasted))


def training_paster(config: Config, source: NuScenesSource, reads_lidar: bool, epochs: int) -> GTPaster | None:
    """The paster a training run of `epochs` epochs uses, or None: GT-paste off, no train-time
    augmentation, or a model that reads no points (a camera model would learn boxes its images
    do not show). Raises DatasetError when the database is missing or does not fit the run."""
    augment = config.augment
    if not (augment.gt_paste and config.train.augment and reads_lidar):
        return None
    path = Path(augment.gt_database) if augment.gt_database else \
        default_database_path(source.nusc.dataroot, source.nusc.version, source.split)
    expected = (source.nusc.version, source.split, config.model.lidar.sweeps)
    build = (f"`vexkd-data gt-database --dataroot {source.nusc.dataroot} --version {expected[0]} "
             f"--split {expected[1]} --sweeps {expected[2]}" + (f" --out {path}`" if augment.gt_database else "`"))
    if not (path / INDEX).is_file():
        raise DatasetError(f"augment.gt_paste is on but there is no GT database at {path}: build it with {build}"
                           + ("" if augment.gt_database else " or name one with augment.gt_database=DIR"))
    database = GTDatabase.load(path)
    if (database.version, database.split, database.sweeps) != expected:
        raise DatasetError(f"GT database {path} holds {database.version}/{database.split} with {database.sweeps} "
                           f"sweeps; this run trains on {expected[0]}/{expected[1]} with {expected[2]} sweeps "
                           f"(rebuild it with {build} --overwrite)")
    return GTPaster(database, max(0, epochs - augment.gt_paste_stop_epochs))
