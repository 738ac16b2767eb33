"""Write a complete synthetic dataset in the nuScenes schema.

Scenes are simulated independently (in parallel when workers > 1) from seeds derived
from the dataset seed and the scene index, so the same arguments give byte-identical
output whatever the number of workers.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vexkd_core.io import atomic_write_bytes, atomic_write_text

from .city import ASPHALT, CARPARK, LOCATIONS, PAINT_WHITE, PAINT_YELLOW, City, build_city
from .mapjson import city_map_json
from .rig import CAMERA_CHANNELS, LIDAR_CHANNEL
from .scene_writer import SceneJob, make_token, simulate_scene
from .taxonomy import ATTRIBUTES, CATEGORIES, VISIBILITY_LEVELS

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")
# 2018-07-24 03:28:47 UTC, inside the nuScenes collection period.
BASE_TIMESTAMP_US = 1_532_402_927_000_000
LOG_PREFIX = {"singapore": "n015-2018-07-24-11-22-45+0800", "boston": "n008-2018-08-01-15-16-36-0400"}


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    scenes: int = 10
    samples_per_scene: int = 10
    sweeps: int = 9  # LiDAR sweeps kept before each key frame, at 20 Hz (9 = all)
    camera_sweeps: int = 5  # camera frames kept between key frames, at 12 Hz (5 = all)
    seed: int = 0
    image_size: tuple[int, int] = (800, 450)
    version: str = "v1.0-trainval"
    val_scenes: int = 2
    azimuth_steps: int = 1084
    workers: int = 1

    def validate(self) -> None:
        if self.scenes < 2:
            raise ValueError("--scenes must be at least 2 (one train and one val scene)")
        if not 1 <= self.val_scenes < self.scenes:
            raise ValueError(f"val scenes ({self.val_scenes}) must be between 1 and scenes - 1")
        if self.samples_per_scene < 2:
            raise ValueError("--samples-per-scene must be at least 2")
        if not 0 <= self.sweeps <= 9:
            raise ValueError("--sweeps must be in 0..9 (LiDAR runs at 20 Hz, key frames at 2 Hz)")
        if not 0 <= self.camera_sweeps <= 5:
            raise ValueError("--camera-sweeps must be in 0..5 (cameras run at 12 Hz)")
        if min(self.image_size) < 32:
            raise ValueError(f"--image-size {self.image_size} is too small")


def demo_config(out: Path, workers: int = 2) -> SynthConfig:
    """The world `make demo` trains and evaluates on: 6 train and 2 val scenes of 4 s."""
    return SynthConfig(out=out, scenes=8, val_scenes=2, samples_per_scene=8, image_size=(480, 270),
                       workers=workers)


def scene_names(version: str, train: int, val: int) -> tuple[list[str], list[str]]:
    """Real nuScenes scene names of the matching predefined splits, so the devkit's
    `train`/`val` evaluation sets select the synthetic scenes as they would real ones."""
    from nuscenes.utils import splits

    train_pool, val_pool = (splits.mini_train, splits.mini_val) if version.endswith("mini") else \
        (splits.train, splits.val)
    if train > len(train_pool) or val > len(val_pool):
        raise ValueError(f"{version} has room for {len(train_pool)} train and {len(val_pool)} val scenes")
    return list(train_pool[:train]), list(val_pool[:val])


@lru_cache(maxsize=len(LOCATIONS))
def _city(location: str, seed: int) -> City:
    return build_city(location, seed)


def _run_job(arguments: tuple[SceneJob, str]) -> dict[str, list]:
    job, dataroot = arguments
    return simulate_scene(job, _city(job.location, job.seed), Path(dataroot))


def _static_tables(seed: int) -> dict[str, list]:
    return {
        "category": [{"token": make_token("category", name), "name": name, "description": description,
                      "index": index + 1} for index, (name, description) in enumerate(CATEGORIES)],
        "attribute": [{"token": make_token("attribute", name), "name": name, "description": description}
                      for name, description in ATTRIBUTES],
        "visibility": [{"token": token, "level": level, "description": description}
                       for token, level, description, _ in VISIBILITY_LEVELS],
        "sensor": [{"token": make_token("sensor", channel), "channel": channel,
                    "modality": "lidar" if channel == LIDAR_CHANNEL else "camera"}
                   for channel in (LIDAR_CHANNEL,) + CAMERA_CHANNELS],
    }


def scene_jobs(config: SynthConfig) -> list[SceneJob]:
    """One job per scene: train scenes first, then val; locations in rotation."""
    train_names, val_names = scene_names(config.version, config.scenes - config.val_scenes, config.val_scenes)
    jobs = []
    for index, name in enumerate(train_names + val_names):
        location = LOCATIONS[index % len(LOCATIONS)]
        jobs.append(SceneJob(index, name, location, LOG_PREFIX[location.split("-")[0]] + f"-s{index:03d}",
                             BASE_TIMESTAMP_US + index * 3_600_000_000, config.samples_per_scene, config.sweeps,
                             config.camera_sweeps, tuple(config.image_size), config.azimuth_steps, config.seed))
    return jobs


def _semantic_prior_png(city: City) -> bytes:
    """The map table's raster: drivable surface at 0.1 m, north up (row 0 = max y)."""
    drivable = np.isin(city.ground, (ASPHALT, PAINT_WHITE, PAINT_YELLOW, CARPARK)).astype(np.uint8) * 255
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(drivable[::-1]))
    return encoded.tobytes()


MARKER = ".vexkd-synthetic.json"  # in every world write_dataset wrote: the only licence to remove one


def check_destination(out: Path, overwrite: bool, marker: str = MARKER, what: str = "a synthetic world") -> None:
    """Refuse `out` unless it is absent, empty, or a folder marked by `marker` we may overwrite.

    Only the marker counts: a real nuScenes download has exactly the folders a synthetic
    world has (samples/ sweeps/ maps/ <version>/), so the layout proves nothing.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file; choose a folder for the dataset")
    if not any(out.iterdir()):
        return
    if not (out / marker).is_file():
        raise FileExistsError(f"{out} holds data vexkd-data did not write (no marker); refusing to remove it"
                              " (delete it yourself, or choose another --out)")
    if not overwrite:
        raise FileExistsError(f"{out} already holds {what}; pass --overwrite to replace it")


def _write_marker(root: Path, config: SynthConfig) -> None:
    """The marker: what was asked for, and a write id that tells two writes apart."""
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()}
    atomic_write_text(root / MARKER, json.dumps({"writer": "vexkd-data synth", "write_id": uuid.uuid4().hex,
                                                 "config": settings}, indent=2))


def sibling_path(out: Path, kind: str) -> Path:
    """A fresh name next to `out` (same file system, so renames are atomic)."""
    return out.with_name(f"{out.name}.{kind}-{uuid.uuid4().hex[:8]}")


def move_into_place(partial: Path, out: Path, overwrite: bool, marker: str = MARKER,
                    what: str = "a synthetic world") -> None:
    """Rename the complete folder to `out`; a replaced one is deleted only once the new one is in."""
    check_destination(out, overwrite, marker, what)  # again: the folder may have changed while it was written
    old = None
    if out.exists() and any(out.iterdir()):
        old = sibling_path(out, "old")
        os.rename(out, old)
    try:
        os.replace(partial, out)  # an empty `out` is replaced, as rename(2) allows
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)


def write_dataset(config: SynthConfig, progress: bool = True, overwrite: bool = False) -> dict[str, int]:
    """Write the dataset to config.out; returns counts of what was written.

    An existing non-empty config.out is replaced only if it holds a world written here
    (its marker) and `overwrite` is set. The world is written to a sibling folder and
    renamed into place when complete, so an interrupted write leaves nothing under
    config.out, and the sibling is removed.
    """
    config.validate()
    out = Path(config.out)
    if out.is_symlink():  # replace the world the link points to, and keep the link
        out = out.resolve()
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = sibling_path(out, "partial")
    partial.mkdir()  # plain mkdir, not mkdtemp (mode 0700): the world gets the umask's mode
    try:
        counts = _write_world(config, partial, progress)
        _write_marker(partial, config)
        move_into_place(partial, out, overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful move
    return counts


def _simulate_scenes(config: SynthConfig, jobs: list[SceneJob], root: Path, progress: bool) -> dict[str, list]:
    """Every scene's sensor files under `root`; returns all tables, scene records in job order."""
    for folder in ("samples", "sweeps"):
        for channel in (LIDAR_CHANNEL,) + CAMERA_CHANNELS:
            (root / folder / channel).mkdir(parents=True, exist_ok=True)
    tables = _static_tables(config.seed)
    for name in TABLES:
        tables.setdefault(name, [])
    work = [(job, str(root)) for job in jobs]
    bar = tqdm(total=len(jobs), desc="synthetic scenes", unit="scene", disable=not progress)
    if config.workers > 1:
        with multiprocessing.get_context("fork").Pool(config.workers) as pool:
            results = []
            for result in pool.imap(_run_job, work):
                results.append(result)
                bar.update()
    else:
        results = []
        for item in work:
            results.append(_run_job(item))
            bar.update()
    bar.close()
    for result in results:
        for name, records in result.items():
            tables[name].extend(records)
    return tables


def _write_world(config: SynthConfig, out: Path, progress: bool) -> dict[str, int]:
    """The whole dataset under `out` (the partial folder); returns counts of what was written."""
    jobs = scene_jobs(config)
    tables = _simulate_scenes(config, jobs, out, progress)
    used_locations = sorted({job.location for job in jobs}, key=LOCATIONS.index)
    for location in used_locations:
        city = _city(location, config.seed)
        png = f"maps/{make_token('map', location, config.seed)}.png"
        atomic_write_bytes(out / png, _semantic_prior_png(city))
        atomic_write_text(out / "maps" / "expansion" / f"{location}.json", json.dumps(city_map_json(city)))
        log_tokens = [log["token"] for log in tables["log"] if log["location"] == location]
        tables["map"].append({"category": "semantic_prior", "token": make_token("map", location, config.seed),
                              "filename": png, "log_tokens": log_tokens})
    for name in TABLES:
        atomic_write_text(out / config.version / f"{name}.json", json.dumps(tables[name], indent=0))
    splits = {"train": [job.name for job in jobs[:config.scenes - config.val_scenes]],
              "val": [job.name for job in jobs[config.scenes - config.val_scenes:]]}
    atomic_write_text(out / config.version / "splits.json", json.dumps(splits, indent=2))
    return {"scenes": len(jobs), "samples": len(tables["sample"]), "sample_data": len(tables["sample_data"]),
            "annotations": len(tables["sample_annotation"]), "instances": len(tables["instance"])}
