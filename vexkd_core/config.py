"""Model, data and training configuration: frozen dataclasses with two presets.

`tiny` trains on a 2-core CPU in minutes (tests, the demo); `nuscenes` is the paper-scale
setup (BEVFusion geometry: +-54 m at 0.6 m, 256x704 images). A YAML file or `key=value`
overrides change single fields (`model.bev_channels=64`); the full config is stored in
every checkpoint, so a model is rebuilt from its checkpoint alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vexkd_core.structures import BEVGrid


@dataclass(frozen=True)
class GridConfig:
    """The BEV raster shared by encoders, fusion, decoder and heads (LiDAR frame)."""

    half_extent_m: float = 51.2
    resolution_m: float = 0.8
    z_min_m: float = -5.0
    z_max_m: float = 3.0

    @property
    def bev(self) -> BEVGrid:
        return BEVGrid.centered(self.half_extent_m, self.resolution_m)


@dataclass(frozen=True)
class MapGridConfig:
    """The map-segmentation raster (BEVFusion: +-50 m at 0.5 m, 200 x 200)."""

    half_extent_m: float = 50.0
    resolution_m: float = 1.0

    @property
    def bev(self) -> BEVGrid:
        return BEVGrid.centered(self.half_extent_m, self.resolution_m)


@dataclass(frozen=True)
class CameraConfig:
    BACKBONES = ("small", "resnet18", "resnet34", "resnet50")  # unannotated: class constants, not fields
    SMALL_BACKBONE_CHANNELS = (16, 32, 64, 128)

    input_height: int = 96  # after resize and crop
    input_width: int = 256
    top_crop_fraction: float = 0.25  # share of the resized image's top (sky) cut off
    # "small": the in-repo network, as wide as backbone_channels; "resnet18/34/50":
    # torchvision's layout, stage widths 64..512 (256..2048 for resnet50).
    backbone: str = "small"
    backbone_channels: tuple[int, ...] = SMALL_BACKBONE_CHANNELS  # small only: strides 4, 8, 16, 32
    feature_stride: int = 8
    feature_channels: int = 64
    depth_min_m: float = 1.0
    depth_max_m: float = 60.0
    depth_step_m: float = 2.0
    # Training only: LiDAR depth supervises the depth logits (BEVDepth's depth_loss_factor, on
    # a loss of the same scale: a few units at the start). 0 turns it off.
    depth_loss_weight: float = 3.0
    # Optional local state dict for the backbone, e.g. torchvision's resnet50-0676ba61.pth
    # (its fc.* classifier is skipped); never downloaded.
    pretrained_backbone: str = ""
    # With pretrained weights: keep the backbone's BatchNorm statistics as loaded (mmdet's
    # norm_eval); its BN scales and shifts still train.
    backbone_norm_eval: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in self.BACKBONES:
            raise ValueError(f"model.camera.backbone must be one of {', '.join(self.BACKBONES)}, "
                             f"not '{self.backbone}'")
        if self.backbone != "small" and self.backbone_channels != self.SMALL_BACKBONE_CHANNELS:
            raise ValueError(f"model.camera.backbone_channels is for backbone=small only; {self.backbone}'s "
                             f"stage widths follow from the network, leave it unset")

    @property
    def depth_bins(self) -> int:
        return int(round((self.depth_max_m - self.depth_min_m) / self.depth_step_m))


@dataclass(frozen=True)
class LidarConfig:
    sweeps: int = 3  # previous sweeps accumulated with the key frame
    max_points: int = 150_000
    pillar_channels: int = 32


@dataclass(frozen=True)
class FusionConfig:
    layers: int = 1
    heads: int = 4
    points: int = 4
    ffn_channels: int = 64
    symmetric_mode: str = "levels"  # "levels": one attention, two levels; "branches": two averaged
    # Query grid = BEV grid / downsample; values are still sampled from the full-resolution
    # modality maps. 1 is the paper's setup, in both presets: at 2 (4x fewer queries) the
    # tiny teacher, fused from a LiDAR start, fell to val mAP 0.210 against the LiDAR
    # student's 0.341; at 1 it reaches 0.387 for 1.2x the training time.
    downsample: int = 1


@dataclass(frozen=True)
class ModelConfig:
    bev_channels: int = 32  # encoder outputs and fused map
    fuser: str = "mgfm"  # the teacher's fusion: "mgfm" (VeXKD) or "convfuser" (BEVFusion's, for comparison)
    decoder_channels: tuple[int, ...] = (32, 64)
    decoder_out_channels: int = 64  # high-level BEV features
    head_channels: int = 32
    max_detections: int = 200
    score_threshold: float = 0.05
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation. The defaults are the tiny preset's (rotation, scale, y-flip, one
    image rescale shared by the cameras); the nuscenes preset turns on every part of BEVFusion's
    (GlobalRotScaleTrans, RandomFlip3D, ImageAug3D)."""

    rotation_deg: float = 22.5  # the LiDAR frame turns about +z by up to this either way
    scale: tuple[float, float] = (0.95, 1.05)
    flip: bool = True  # y -> -y with p = 0.5
    image_scale: tuple[float, float] = (0.95, 1.05)  # times the fit-to-width resize
    flip_x: bool = False  # x -> -x with p = 0.5, independent of `flip`
    translation_std_m: float = 0.0  # normal, per axis
    image_per_camera: bool = False  # each camera its own image draw (BEVFusion) or one shared by all
    image_crop_jitter: bool = False  # the horizontal crop anywhere in the spare width, not centred
    image_rotation_deg: float = 0.0  # about the input image's centre, up to this either way
    image_flip: bool = False  # mirrored left-right with p = 0.5
    # GT-paste (mmdet3d ObjectSample) from a `vexkd-data gt-database` folder; "" is its default
    # place, <dataroot>/vexkd_gt_database_<version>_<split>. LiDAR-reading models only.
    gt_paste: bool = False
    gt_database: str = ""
    gt_paste_stop_epochs: int = 0  # the last epochs train on unpasted scenes (TransFusion's fade)
    # Sensor randomisation, so that a model trained on one LiDAR (the synthetic world's) meets
    # another less brittly; off in both presets (docs/synthetic_world.md).
    intensity_scale: tuple[float, float] = (1.0, 1.0)  # all intensities times one draw: another calibration
    point_dropout: float = 0.0  # up to this share of the points dropped at random: sparser returns
    height_jitter_m: float = 0.0  # the frame and its boxes up or down (normal): another mount height


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    epochs: int = 20
    max_steps: int = 0  # 0: run all epochs
    grad_clip: float = 10.0
    checkpoint_every: int = 200
    seed: int = 0
    workers: int = 0  # DataLoader processes
    # Decoded samples kept for the next epochs, per DataLoader process (LRU, in MiB). The
    # tiny preset's whole world fits (48 samples of ~3 MB), so its many epochs read each
    # sample once; nuScenes (~28k samples of ~10 MB) would never see a hit, so it keeps none.
    sample_cache_mb: int = 256
    detection_weight: float = 1.0
    map_weight: float = 1.0
    augment: bool = True
    cbgs: bool = False  # class-balanced resampling of the training samples (mmdet3d CBGSDataset)
    # The fusion teacher's training samples lose one sensor with this probability (LiDAR and
    # cameras equally often), so its fused features cannot hang on one sensor alone.
    teacher_sensor_dropout: float = 0.0
    # "detection", "map" or "both": the heads a model has. BEVFusion trains one model per
    # task, and the paper reports its detection and segmentation models separately.
    tasks: str = "both"

    def __post_init__(self) -> None:
        if not 0.0 <= self.teacher_sensor_dropout <= 1.0:
            raise ValueError(f"train.teacher_sensor_dropout must be a probability in [0, 1], "
                             f"not {self.teacher_sensor_dropout}")

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks as the heads and losses name them."""
        names = {"detection": ("detection",), "map": ("segmentation",), "both": ("detection", "segmentation")}
        if self.tasks not in names:
            raise ValueError(f"train.tasks must be detection, map or both, not '{self.tasks}'")
        return names[self.tasks]


@dataclass(frozen=True)
class Config:
    name: str = "tiny"
    grid: GridConfig = field(default_factory=GridConfig)
    map_grid: MapGridConfig = field(default_factory=MapGridConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preset(name: str) -> Config:
    if name == "tiny":
        return Config()
    if name == "nuscenes":
        return Config(
            name="nuscenes",
            grid=GridConfig(half_extent_m=54.0, resolution_m=0.6),
            map_grid=MapGridConfig(half_extent_m=50.0, resolution_m=0.5),
            model=ModelConfig(
                bev_channels=128, decoder_channels=(128, 256), decoder_out_channels=256, head_channels=64,
                max_detections=500,
                camera=CameraConfig(input_height=256, input_width=704, top_crop_fraction=0.4, backbone="resnet50",
                                    feature_channels=256, depth_step_m=0.5),
                lidar=LidarConfig(sweeps=9, max_points=300_000, pillar_channels=128),
                fusion=FusionConfig(layers=3, heads=8, points=4, ffn_channels=512, downsample=1)),
            # BEVFusion's nuScenes augmentation; image_scale is its resize_lim 0.38-0.55 of 1600 px
            # over the fit-to-width 704 / 1600 = 0.44.
            augment=AugmentConfig(rotation_deg=45.0, scale=(0.9, 1.1), flip_x=True, translation_std_m=0.5,
                                  image_scale=(0.38 / 0.44, 0.55 / 0.44), image_per_camera=True,
                                  image_crop_jitter=True, image_rotation_deg=5.4, image_flip=True,
                                  gt_paste=True, gt_paste_stop_epochs=5),
            train=TrainConfig(batch_size=4, learning_rate=2e-4, epochs=20, checkpoint_every=2000, workers=4,
                              cbgs=True, sample_cache_mb=0))
    raise ValueError(f"unknown preset '{name}' (tiny or nuscenes)")


PRESETS = ("tiny", "nuscenes")


def _convert(value: Any, template: Any, path: str) -> Any:
    """Coerce a YAML/CLI value to the type of the field it replaces."""
    if isinstance(template, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{path}: expected true/false, got '{value}'")
            return value.lower() in ("true", "1")
        return bool(value)
    if isinstance(template, tuple):
        items = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) == 0:
            raise ValueError(f"{path}: expected a list, got '{value}'")
        return tuple(_convert(v, template[0], path) for v in items)
    if isinstance(template, (int, float)):
        try:
            return type(template)(yaml.safe_load(value) if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: expected a {type(template).__name__}, got '{value}'") from None
    return str(value)


def override(config: Any, changes: dict[str, Any], prefix: str = "") -> Any:
    """A copy of `config` with nested fields replaced; unknown keys are an error."""
    updates = {}
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        path = f"{prefix}{head}"
        if head not in names:
            raise ValueError(f"unknown config field '{path}'")
        current = getattr(config, head)
        if dataclasses.is_dataclass(current):
            nested = value if not rest else {rest: value}
            if not isinstance(nested, dict):
                raise ValueError(f"{path} is a section; set one of its fields, e.g. {path}.<field>=...")
            updates[head] = override(updates.get(head, current), nested, f"{path}.")
        else:
            if rest:
                raise ValueError(f"'{path}' has no field '{rest}'")
            updates[head] = _convert(value, current, path)
    return dataclasses.replace(config, **updates)


def from_dict(data: dict) -> Config:
    """Rebuild a Config saved with to_dict (e.g. from a checkpoint)."""
    return override(preset(data.get("name", "tiny")) if data.get("name") in PRESETS else Config(), data)


def load_config(spec: str, overrides: list[str] = ()) -> Config:
    """`tiny`, `nuscenes` or a YAML file (with an optional `preset:` key), then key=value overrides."""
    if spec in PRESETS:
        config = preset(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"config '{spec}' is neither a preset ({', '.join(PRESETS)}) nor a file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of config fields")
        config = override(preset(data.pop("preset", "tiny")), data)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' is not key=value")
        parsed[key.strip()] = value.strip()
    return override(config, parsed)
