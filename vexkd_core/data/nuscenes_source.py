"""Samples from any dataset in the nuScenes schema, read through nuscenes-devkit.

Real nuScenes and the synthetic world go through this same code.
"""
from __future__ import annotations

import contextlib
import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.splits import create_splits_scenes

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.geometry import invert_transform, make_transform, matrix_yaw, quaternion_yaw, transform_points
from vexkd_core.structures import BEVGrid, Boxes3D

from .sample import CAMERA_CHANNELS, CameraView, Sample
from .sensor_files import DatasetError, decode_reduction, read_image, read_points, reduced_intrinsics
from .sweeps import sweep_in_key_frame

MAP_LAYERS = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider",
              "lane_divider")
# Real nuScenes ships its map layers as a separate download that many users never fetch.
MAP_EXPANSION_DOWNLOAD = 'the nuScenes "Map expansion" pack v1.3 from the Download page of nuscenes.org'


def open_nuscenes(dataroot: str | Path, version: str):
    dataroot = Path(dataroot)
    if not dataroot.exists():
        raise DatasetError(f"dataroot {dataroot} does not exist")
    if not dataroot.is_dir():
        raise DatasetError(f"dataroot {dataroot} is a file, not a folder")
    if not (dataroot / version / "sample.json").is_file():
        found = sorted(p.name for p in dataroot.iterdir() if (p / "sample.json").is_file())
        raise DatasetError(f"no nuScenes tables for version '{version}' in {dataroot}"
                           + (f" (found: {', '.join(found)})" if found else ""))
    from nuscenes.nuscenes import NuScenes

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (KeyError, AssertionError, FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        raise DatasetError(f"{dataroot}/{version} is not a valid nuScenes dataset: {error!r}") from None


def map_expansion_file(dataroot: str | Path, location: str) -> Path:
    """The map expansion JSON NuScenesMap reads for a location."""
    return Path(dataroot) / "maps" / "expansion" / f"{location}.json"


def lidar_to_global_when(nusc, sample_token: str, channel: str) -> np.ndarray:
    """LIDAR_TOP's pose in the global frame when `channel` of a key frame fired (that
    sample_data's ego pose): the frame a node triggered by `channel` answers in. At the key
    frame's own LIDAR_TOP it is the sample's lidar_to_global; nuScenes' cameras fire up to 43 ms
    earlier."""
    data = nusc.get("sample", sample_token)["data"]
    lidar = nusc.get("calibrated_sensor", nusc.get("sample_data", data["LIDAR_TOP"])["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", nusc.get("sample_data", data[channel])["ego_pose_token"])
    return make_transform(ego["rotation"], ego["translation"]) @ make_transform(lidar["rotation"], lidar["translation"])


def split_scene_names(nusc, split: str) -> list[str]:
    """Scene names of a split: `<version>/splits.json` first, then the devkit's own splits."""
    custom = Path(nusc.dataroot) / nusc.version / "splits.json"
    if custom.is_file():
        splits = json.loads(custom.read_text())
        if split in splits:
            return list(splits[split])
    predefined = create_splits_scenes()
    if split not in predefined:
        raise DatasetError(f"split '{split}' is neither in {custom} nor a nuScenes split")
    return predefined[split]


class NuScenesSource:
    """Key frames of one split (None: every scene) as typed Samples.

    With an `input_width` (the model's), images are decoded as small as they can be while
    staying that wide (sensor_files.decode_reduction), their K scaled to match; 0 keeps
    them at full resolution. With a `map_source_grid`, samples carry map masks where the
    dataset has the map expansion file of every location of these scenes; without them their
    map_masks is None and `maps_missing` says which file is missing.
    """

    def __init__(self, dataroot: str | Path, version: str, split: str | None, sweeps: int,
                 map_source_grid: BEVGrid | None = None, nusc=None, input_width: int = 0):
        self.nusc = nusc if nusc is not None else open_nuscenes(dataroot, version)
        names = set(split_scene_names(self.nusc, split)) if split is not None else None
        scenes = [s for s in self.nusc.scene if names is None or s["name"] in names]
        if not scenes:
            raise DatasetError(f"split '{split}' has no scenes in {dataroot}/{version}")
        self.split = split
        self.sweeps = sweeps
        self.missing_map_files = self._missing_map_files(scenes) if map_source_grid is not None else []
        # Map ground truth is all or nothing per source: metrics or losses over the samples of
        # some locations only would not be the split's (maps_missing says what is missing).
        self.map_source_grid = None if self.missing_map_files else map_source_grid
        self.input_width = input_width
        self.tokens: list[str] = []
        for scene in scenes:
            token = scene["first_sample_token"]
            while token:
                self.tokens.append(token)
                token = self.nusc.get("sample", token)["next"]

    def __len__(self) -> int:
        return len(self.tokens)

    def _missing_map_files(self, scenes: list[dict]) -> list[Path]:
        locations = dict.fromkeys(self.nusc.get("log", scene["log_token"])["location"] for scene in scenes)
        files = [map_expansion_file(self.nusc.dataroot, location) for location in locations]
        return [path for path in files if not path.is_file()]

    @property
    def maps_missing(self) -> str | None:
        """Why this source's samples carry no map masks though a map grid was asked for, in
        one line naming the first missing file and where it comes from; None when they do."""
        if not self.missing_map_files:
            return None
        first, more = self.missing_map_files[0], len(self.missing_map_files) - 1
        others = f" (and {more} more of these scenes' locations)" if more else ""
        return (f"no {first}{others}; map files come in {MAP_EXPANSION_DOWNLOAD}, "
                f"unpacked into {Path(self.nusc.dataroot) / 'maps'}")

    def _pose(self, sample_data: dict) -> tuple[np.ndarray, np.ndarray]:
        """(sensor -> ego, ego -> global) of a sample_data record."""
        calibration = self.nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
        ego = self.nusc.get("ego_pose", sample_data["ego_pose_token"])
        return (make_transform(calibration["rotation"], calibration["translation"]),
                make_transform(ego["rotation"], ego["translation"]))

    def sample(self, index: int) -> Sample:
        record = self.nusc.get("sample", self.tokens[index])
        lidar = self.nusc.get("sample_data", record["data"]["LIDAR_TOP"])
        lidar_to_global = lidar_to_global_when(self.nusc, record["token"], "LIDAR_TOP")
        global_to_lidar = invert_transform(lidar_to_global)
        return Sample(token=record["token"], timestamp_us=record["timestamp"],
                      points=self._points(lidar, global_to_lidar),
                      cameras=self._cameras(record, global_to_lidar),
                      lidar_to_global=lidar_to_global, boxes=self._boxes(record, global_to_lidar),
                      map_masks=self._map(record, lidar_to_global), map_source_grid=self.map_source_grid)

    def _cameras(self, record: dict, global_to_lidar: np.ndarray) -> list[CameraView]:
        cameras = []
        for channel in CAMERA_CHANNELS:
            camera = self.nusc.get("sample_data", record["data"][channel])
            camera_to_ego, camera_ego_to_global = self._pose(camera)
            calibration = self.nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])
            reduction = decode_reduction(camera["width"], self.input_width)
            intrinsics = np.asarray(calibration["camera_intrinsic"], dtype=np.float64)
            cameras.append(CameraView(channel, read_image(Path(self.nusc.dataroot) / camera["filename"], reduction),
                                      reduced_intrinsics(intrinsics, reduction),
                                      global_to_lidar @ camera_ego_to_global @ camera_to_ego))
        return cameras

    def ground_truth(self, sample_token: str) -> tuple[np.ndarray, Boxes3D, np.ndarray | None]:
        """(lidar_to_global, boxes, map masks) of a key frame, without reading any sensor data."""
        record = self.nusc.get("sample", sample_token)
        lidar_to_global = lidar_to_global_when(self.nusc, sample_token, "LIDAR_TOP")
        return lidar_to_global, self._boxes(record, invert_transform(lidar_to_global)), \
            self._map(record, lidar_to_global)

    def _points(self, key: dict, global_to_lidar: np.ndarray) -> np.ndarray:
        """Key sweep plus up to `sweeps` previous ones, in the key LiDAR frame, with time lag."""
        clouds, current = [], key
        for _ in range(self.sweeps + 1):
            raw = read_points(Path(self.nusc.dataroot) / current["filename"])
            sensor_to_ego, ego_to_global = self._pose(current)
            clouds.append(sweep_in_key_frame(raw, global_to_lidar @ ego_to_global @ sensor_to_ego,
                                             (key["timestamp"] - current["timestamp"]) * 1e-6))
            if not current["prev"]:
                break
            current = self.nusc.get("sample_data", current["prev"])
        return np.concatenate(clouds)

    def _annotations(self, record: dict):
        """(annotation, detection class) of a key frame's boxes that count in evaluation."""
        for token in record["anns"]:
            annotation = self.nusc.get("sample_annotation", token)
            name = category_to_detection_name(annotation["category_name"])
            # As the nuScenes evaluation, which ignores boxes no sensor saw.
            if name is not None and annotation["num_lidar_pts"] + annotation["num_radar_pts"] > 0:
                yield annotation, name

    def objects_per_class(self) -> dict[str, int]:
        """Distinct annotated objects (instances) per detection class over the split's key
        frames: how many objects one class's AP rests on."""
        instances: dict[str, set[str]] = {name: set() for name in DETECTION_CLASSES}
        for token in self.tokens:
            for annotation, name in self._annotations(self.nusc.get("sample", token)):
                instances[name].add(annotation["instance_token"])
        return {name: len(tokens) for name, tokens in instances.items()}

    def _boxes(self, record: dict, global_to_lidar: np.ndarray) -> Boxes3D:
        rows = []
        for annotation, name in self._annotations(record):
            centre = transform_points(global_to_lidar, np.asarray([annotation["translation"]]))[0]
            yaw = quaternion_yaw(annotation["rotation"]) + matrix_yaw(global_to_lidar)
            velocity = np.nan_to_num(self.nusc.box_velocity(annotation["token"])[:2])
            velocity = global_to_lidar[:2, :2] @ velocity
            width, length, height = annotation["size"]
            rows.append((centre, (length, width, height), yaw, velocity, DETECTION_CLASSES.index(name)))
        if not rows:
            return Boxes3D.empty()
        centre, size, yaw, velocity, label = (np.array(c) for c in zip(*rows))
        return Boxes3D(centre, size, np.arctan2(np.sin(yaw), np.cos(yaw)), velocity, label.astype(np.int64),
                       np.ones(len(rows)))

    def _map(self, record: dict, lidar_to_global: np.ndarray) -> np.ndarray | None:
        """The map masks around the ego; None without a map grid or without map files (maps_missing)."""
        if self.map_source_grid is None:
            return None
        scene = self.nusc.get("scene", record["scene_token"])
        location = self.nusc.get("log", scene["log_token"])["location"]
        grid = self.map_source_grid
        yaw = np.degrees(matrix_yaw(lidar_to_global))
        masks = _nuscenes_map(self.nusc.dataroot, location).get_map_mask(
            (lidar_to_global[0, 3], lidar_to_global[1, 3], grid.height * grid.resolution,
             grid.width * grid.resolution), yaw, list(MAP_LAYERS), (grid.height, grid.width)) > 0
        # BEVFusion's six classes: the two divider layers form one.
        return np.concatenate([masks[:5], masks[5:7].any(axis=0, keepdims=True)])


@lru_cache(maxsize=8)
def _nuscenes_map(dataroot: str, location: str):
    from nuscenes.map_expansion.map_api import NuScenesMap

    return NuScenesMap(dataroot=dataroot, map_name=location)
