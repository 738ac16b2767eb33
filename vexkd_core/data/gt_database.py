"""The ground-truth database GT-paste draws from (mmdet3d's create_groundtruth_database).

Every annotated object of a split's key frames with the points of the multi-sweep cloud
inside its box, those points in the box's own frame (origin at the box centre, x along
its heading), so pasting one back is a single rigid transform.

On disk, a folder:
    points.bin   float32 rows of POINT_FEATURES (x, y, z in the box frame), object after object
    index.json   the settings (version, split, sweeps, min points, point features)
    objects.npz  per object its box, class, sample and row range, as columns: nuScenes train
                 has about a million objects, a few bytes each here, not a JSON dict each
    .vexkd-gt-database.json   the marker: vexkd wrote this folder and may replace it
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.geometry import invert_transform
from vexkd_core.io import atomic_npz, atomic_write_json, atomic_write_text
from vexkd_core.structures import Boxes3D

from .nuscenes_source import DatasetError, NuScenesSource
from .sample import POINT_FEATURES
from .synthetic.writer import check_destination, move_into_place, sibling_path

MARKER = ".vexkd-gt-database.json"
WHAT = "a GT database"
INDEX = "index.json"
OBJECTS = "objects.npz"
POINTS = "points.bin"
# mmdet3d's nuScenes db_sampler keeps objects with at least 5 points (every class).
MIN_POINTS = 5


def default_database_path(dataroot: str | Path, version: str, split: str) -> Path:
    return Path(dataroot) / f"vexkd_gt_database_{version}_{split}"


def box_frame(xyz: np.ndarray, center: np.ndarray, yaw: float) -> np.ndarray:
    """(N, 3) points of the LiDAR frame in the frame of a box at `center` heading `yaw`."""
    c, s = np.cos(yaw), np.sin(yaw)
    shifted = xyz - center
    return np.column_stack([c * shifted[:, 0] + s * shifted[:, 1], -s * shifted[:, 0] + c * shifted[:, 1],
                            shifted[:, 2]])


def lidar_frame(local: np.ndarray, center: np.ndarray, yaw: float) -> np.ndarray:
    """The inverse of box_frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.column_stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1],
                            local[:, 2]]) + center


def in_box(points: np.ndarray, boxes: Boxes3D, index: int) -> np.ndarray:
    """Bool mask of the (N, >=3) points inside box `index` (its faces included)."""
    center, half = boxes.center[index], boxes.size_lwh[index] / 2.0
    # A cheap bounding-circle cut first: a cloud has ~10^5 points, a box a few hundred.
    near = np.flatnonzero(np.hypot(points[:, 0] - center[0], points[:, 1] - center[1]) <= np.hypot(half[0], half[1]))
    local = box_frame(points[near, :3].astype(np.float64), center, boxes.yaw[index])
    mask = np.zeros(len(points), dtype=bool)
    mask[near[np.all(np.abs(local) <= half, axis=1)]] = True
    return mask


@dataclass(frozen=True)
class GTDatabase:
    """An index over a database folder; each object's points are read when asked for."""

    root: Path
    version: str
    split: str
    sweeps: int
    boxes: Boxes3D  # each object's box in its own sample's LiDAR frame
    offsets: np.ndarray  # (N,) first row in points.bin
    counts: np.ndarray  # (N,) rows
    samples: np.ndarray  # (N,) each object's sample, an index into `tokens`
    tokens: np.ndarray  # (S,) the sample tokens of the split

    @classmethod
    def load(cls, root: str | Path) -> "GTDatabase":
        root = Path(root)
        if not all((root / name).is_file() for name in (INDEX, OBJECTS, POINTS)):
            raise DatasetError(f"no GT database at {root}: build one with "
                               "`vexkd-data gt-database --dataroot DIR --split train`")
        settings = json.loads((root / INDEX).read_text())
        with np.load(root / OBJECTS) as objects:
            columns = {name: objects[name] for name in objects.files}
        boxes = Boxes3D(columns["center"], columns["size_lwh"], columns["yaw"], columns["velocity"],
                        columns["label"].astype(np.int64), np.ones(len(columns["label"])))
        counts = columns["num_points"].astype(np.int64)
        return cls(root, settings["version"], settings["split"], int(settings["sweeps"]), boxes,
                   np.cumsum(counts) - counts, counts, columns["sample"], columns["tokens"])

    def __len__(self) -> int:
        return len(self.counts)

    def points(self, index: int) -> np.ndarray:
        """(M, 5) float32 points of object `index`, in its box frame."""
        width = len(POINT_FEATURES)
        rows = np.fromfile(self.root / POINTS, dtype=np.float32, count=int(self.counts[index]) * width,
                           offset=int(self.offsets[index]) * width * 4)
        return rows.reshape(-1, width)


def lidar_sample(source: NuScenesSource, token: str) -> tuple[np.ndarray, Boxes3D]:
    """(points, boxes) of a key frame as `source.sample` reads them, without the cameras."""
    lidar_to_global, boxes, _ = source.ground_truth(token)
    key = source.nusc.get("sample_data", source.nusc.get("sample", token)["data"]["LIDAR_TOP"])
    return source._points(key, invert_transform(lidar_to_global)), boxes


def write_database(source: NuScenesSource, out: Path, overwrite: bool = False, min_points: int = MIN_POINTS,
                   progress: bool = True) -> dict[str, int]:
    """Write the database of `source`'s key frames to `out`; returns objects kept per class.

    Written into a sibling folder and renamed into place when complete (as `vexkd-data
    synth`), one sample's points in memory at a time; `out` is replaced only when it holds
    a database written here and `overwrite` is set.
    """
    out = Path(out)
    check_destination(out, overwrite, MARKER, WHAT)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = sibling_path(out, "partial")
    partial.mkdir()
    # One array per sample and column, joined at the end (~50 bytes an object).
    columns: dict[str, list[np.ndarray]] = {name: [] for name in
                                            ("center", "size_lwh", "yaw", "velocity", "label", "num_points", "sample")}
    try:
        with (partial / POINTS).open("wb") as stream:
            for number, token in enumerate(tqdm(source.tokens, desc="gt database", unit="sample",
                                                disable=not progress)):
                points, boxes = lidar_sample(source, token)
                kept, counts = [], []
                for index in range(len(boxes)):
                    local = points[in_box(points, boxes, index)]
                    if len(local) < min_points:
                        continue
                    local[:, :3] = box_frame(local[:, :3].astype(np.float64), boxes.center[index], boxes.yaw[index])
                    local.tofile(stream)
                    kept.append(index)
                    counts.append(len(local))
                chosen = boxes.select(np.asarray(kept, dtype=np.int64))
                for name in ("center", "size_lwh", "yaw", "velocity"):
                    columns[name].append(getattr(chosen, name))
                columns["label"].append(chosen.label.astype(np.int8))
                columns["num_points"].append(np.asarray(counts, dtype=np.int64))
                columns["sample"].append(np.full(len(kept), number, dtype=np.int32))
            stream.flush()
            os.fsync(stream.fileno())  # as atomic_write_bytes: complete on disk before the rename
        with atomic_npz(partial / OBJECTS) as add:
            for name, parts in columns.items():
                add(name, np.concatenate(parts))
            add("tokens", np.asarray(source.tokens))
        settings = {"version": source.nusc.version, "split": source.split, "sweeps": source.sweeps,
                    "min_points": min_points, "point_features": list(POINT_FEATURES)}
        atomic_write_json(partial / INDEX, settings)
        atomic_write_text(partial / MARKER, json.dumps({"writer": "vexkd-data gt-database",
                                                        "write_id": uuid.uuid4().hex, "settings": settings}))
        move_into_place(partial, out, overwrite, MARKER, WHAT)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful move
    labels = np.concatenate(columns["label"])
    return {name: int((labels == label).sum()) for label, name in enumerate(DETECTION_CLASSES)}
