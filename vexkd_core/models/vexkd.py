"""The two models VeXKD trains, composed explicitly from the stage modules.

    Teacher:  LiDAR encoder + camera encoder -> MGFM (or ConvFuser) -> BEV decoder -> detection & map heads
    Student:  one encoder (LiDAR or camera)          -> BEV decoder -> detection & map heads

Both return their predictions and their BEV features at two levels: `low` (the output of
the decoder's first, full-resolution stage, right after the fused map or encoder output;
see decoder.py for why it is tapped there) and `high` (the decoder's output), the maps
that masked feature distillation compares.

Each forward is two steps: `network_inputs` (weight-free: which pillar each point is in,
which BEV cell each camera frustum point lands in) and `network` (everything with weights).
An exported ONNX graph is the network; the ONNX runtime calls the same network_inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.config import Config
from vexkd_core.data.preprocess import Batch, Targets
from vexkd_core.structures import BEVGrid
from vexkd_core.timing import StageTimer

from .camera_encoder import CameraEncoder, LiftGeometry
from .decoder import BEVDecoder
from .depth_supervision import depth_loss, depth_targets
from .detection_head import DetectionHead
from .fusion import FUSERS, MGFM, ConvFuser
from .lidar_encoder import LidarEncoder, pillar_inputs
from .map_head import MapHead

MODALITIES = ("fusion", "lidar", "camera")
NETWORK_OUTPUTS = ("heatmap", "regression", "map_logits")  # the heads' raw maps, as network_outputs names them
# What each modality's network takes, in this order (the ONNX graph's input names).
NETWORK_INPUTS = {"lidar": ("point_features", "pillar_cell"), "camera": ("images", "frustum_cell"),
                  "fusion": ("point_features", "pillar_cell", "images", "frustum_cell")}


@dataclass
class Output:
    detection: dict[str, torch.Tensor] | None  # None: the model has no detection head (train.tasks)
    map_logits: torch.Tensor | None  # None: no map head
    low: torch.Tensor  # (B, C_low, H, W): the decoder's first stage
    high: torch.Tensor  # (B, C_high, H, W)
    # (B, N, D, h, w): the camera encoder's, for depth supervision; None without a camera encoder
    depth_logits: torch.Tensor | None = None


def network_outputs(output: Output) -> dict[str, torch.Tensor]:
    """The predictions of an Output by NETWORK_OUTPUTS name (the ONNX graph's outputs): what
    inference decodes; the heads of tasks the model lacks are left out."""
    outputs = dict(output.detection or {})
    if output.map_logits is not None:
        outputs["map_logits"] = output.map_logits
    return outputs


def _run(timer: StageTimer | None, name: str, function, *args):
    return timer.measure(name, function, *args) if timer is not None else function(*args)


class _Heads(nn.Module):
    """Decoder and the task heads of `train.tasks`: the part every model shares."""

    def __init__(self, config: Config, encoded_channels: int):
        super().__init__()
        model, tasks = config.model, config.train.task_names
        self.decoder = BEVDecoder(encoded_channels, model.decoder_channels, model.decoder_out_channels)
        self.detection_head = DetectionHead(self.decoder.out_channels, model.head_channels, len(DETECTION_CLASSES),
                                            config.grid.bev) if "detection" in tasks else None
        self.map_head = MapHead(self.decoder.out_channels, model.head_channels, len(MAP_CLASSES), config.grid.bev,
                                config.map_grid.bev) if "segmentation" in tasks else None

    def run(self, encoded: torch.Tensor, timer: StageTimer | None = None) -> Output:
        """Everything after the encoder (or fusion)."""
        low, high = _run(timer, "decoder", self._decode, encoded)
        return self.from_high(low, high, timer)

    def _decode(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.decoder.first_stage(encoded)
        return low, self.decoder.from_first_stage(low)

    def from_high(self, low: torch.Tensor, high: torch.Tensor, timer: StageTimer | None = None) -> Output:
        """Everything after the high-level BEV features."""
        detection = _run(timer, "detection_head", self.detection_head, high) if self.detection_head else None
        map_logits = _run(timer, "map_head", self.map_head, high) if self.map_head else None
        return Output(detection, map_logits, low, high)


def _lidar_encoder(config: Config) -> LidarEncoder:
    return LidarEncoder(config.grid.bev, config.model.lidar.pillar_channels)


def _camera_encoder(config: Config) -> CameraEncoder:
    return CameraEncoder(config.model.camera, config.grid.bev, (config.grid.z_min_m, config.grid.z_max_m),
                         config.model.bev_channels)


def network_inputs(batch: Batch, modality: str, grid: BEVGrid, lift: LiftGeometry | None) -> dict[str, torch.Tensor]:
    """The tensors of NETWORK_INPUTS[modality] for a batch: the points' pillar inputs and the
    camera frusta's BEV cells (from calibration and augmentation matrices)."""
    inputs = {}
    if modality != "camera":
        pillars = pillar_inputs(batch.points, grid, batch.size)
        inputs.update(point_features=pillars.features, pillar_cell=pillars.cell)
    if modality != "lidar":
        inputs.update(images=batch.images, frustum_cell=lift.cells(
            batch.intrinsics, batch.camera_to_lidar, batch.image_transform, batch.lidar_augmentation,
            batch.camera_valid))
    return inputs


class Teacher(nn.Module):
    """Both encoders, the fuser (`model.fuser`: the MGFM, or BEVFusion's ConvFuser), decoder, heads."""

    modality = "fusion"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        grid = config.grid.bev
        self.lidar_encoder = _lidar_encoder(config)
        self.camera_encoder = _camera_encoder(config)
        lidar_channels, camera_channels = self.lidar_encoder.out_channels, self.camera_encoder.out_channels
        if config.model.fuser == "mgfm":
            self.fusion = MGFM(lidar_channels, camera_channels, config.model.bev_channels, grid.height, grid.width,
                               config.model.fusion)
        elif config.model.fuser == "convfuser":
            self.fusion = ConvFuser(lidar_channels, camera_channels, config.model.bev_channels)
        else:
            raise ValueError(f"model.fuser must be one of {FUSERS}, not '{config.model.fuser}'")
        self.heads = _Heads(config, config.model.bev_channels)

    def load_lidar_branch(self, lidar_student: "Student") -> None:
        """Start from a trained LiDAR model: its encoder, decoder and heads (BEVFusion's
        practice of pre-training the LiDAR branch before fine-tuning the fused model)."""
        if lidar_student.modality != "lidar":
            raise ValueError(f"the teacher's LiDAR branch needs a lidar model, not {lidar_student.modality}")
        if lidar_student.config.train.task_names != self.config.train.task_names:
            raise ValueError(f"the LiDAR model was trained for train.tasks={lidar_student.config.train.tasks}, "
                             f"the teacher is set up for {self.config.train.tasks}")
        self.lidar_encoder.load_state_dict(lidar_student.encoder.state_dict())
        self.heads.load_state_dict(lidar_student.heads.state_dict())

    def forward(self, batch: Batch, timer: StageTimer | None = None) -> Output:
        inputs = _run(timer, "inputs", network_inputs, batch, self.modality, self.config.grid.bev,
                      self.camera_encoder.geometry)
        return self.network(inputs, batch.size, timer)

    def network(self, inputs: dict[str, torch.Tensor], batch_size: int, timer: StageTimer | None = None) -> Output:
        lidar = _run(timer, "lidar_encoder", self.lidar_encoder.encode_pillars, inputs["point_features"],
                     inputs["pillar_cell"], batch_size)
        camera, depth_logits = _run(timer, "camera_encoder", self.camera_encoder.encode_cells, inputs["images"],
                                    inputs["frustum_cell"])
        fused = _run(timer, "fusion", self.fusion, lidar, camera)
        output = self.heads.run(fused, timer)
        output.depth_logits = depth_logits
        return output


class Student(nn.Module):
    """A single-modality model: exactly the baseline architecture, with or without distillation."""

    def __init__(self, config: Config, modality: str):
        super().__init__()
        if modality not in ("lidar", "camera"):
            raise ValueError(f"student modality must be 'lidar' or 'camera', not '{modality}'")
        self.config, self.modality = config, modality
        self.encoder = _lidar_encoder(config) if modality == "lidar" else _camera_encoder(config)
        self.heads = _Heads(config, self.encoder.out_channels)

    def forward(self, batch: Batch, timer: StageTimer | None = None) -> Output:
        lift = self.encoder.geometry if self.modality == "camera" else None
        inputs = _run(timer, "inputs", network_inputs, batch, self.modality, self.config.grid.bev, lift)
        return self.network(inputs, batch.size, timer)

    def network(self, inputs: dict[str, torch.Tensor], batch_size: int, timer: StageTimer | None = None) -> Output:
        if self.modality == "lidar":
            encoded = _run(timer, "lidar_encoder", self.encoder.encode_pillars, inputs["point_features"],
                           inputs["pillar_cell"], batch_size)
            return self.heads.run(encoded, timer)
        encoded, depth_logits = _run(timer, "camera_encoder", self.encoder.encode_cells, inputs["images"],
                                     inputs["frustum_cell"])
        output = self.heads.run(encoded, timer)
        output.depth_logits = depth_logits
        return output


def camera_encoder_of(model: nn.Module) -> CameraEncoder | None:
    """The camera encoder of a teacher or a camera student; None for a LiDAR student."""
    if isinstance(model, Teacher):
        return model.camera_encoder
    return model.encoder if model.modality == "camera" else None


def build_model(config: Config, modality: str) -> nn.Module:
    if modality == "fusion":
        return Teacher(config)
    return Student(config, modality)


def initial_model(config: Config, modality: str) -> nn.Module:
    """build_model after seeding torch with the config's seed, so the same config starts from
    the same weights: how training starts a model, and how a tool rebuilds that start."""
    torch.manual_seed(config.train.seed)
    return build_model(config, modality)


def detection_targets(model: nn.Module, targets: list[Targets], device) -> dict[str, torch.Tensor]:
    """The detection head's targets of a batch: computed once per step, read by the task loss
    and by distillation's ground-truth masks."""
    return model.heads.detection_head.targets([t.boxes for t in targets], device)


def task_losses(model: nn.Module, output: Output, targets: list[Targets],
                box_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Detection (heatmap + box) and map losses of the model's tasks, weighted by the training
    config; `box_targets`: `detection_targets(...)` when the caller has them already."""
    train = model.config.train
    losses = {}
    if model.heads.detection_head is not None:
        head = model.heads.detection_head
        if box_targets is None:
            box_targets = detection_targets(model, targets, output.high.device)
        losses.update({name: value * train.detection_weight
                       for name, value in head.loss(output.detection, box_targets).items()})
    if model.heads.map_head is not None:
        losses["map"] = model.heads.map_head.loss(output.map_logits, map_targets_of(targets, output.high.device)) \
            * train.map_weight
    return losses


def map_targets_of(targets: list[Targets], device) -> torch.Tensor:
    """The batch's map targets, (B, 6, H, W). A map head cannot learn from samples without
    map ground truth: training refuses such a dataset at start (require_map_ground_truth)."""
    if any(t.map_masks is None for t in targets):
        raise ValueError("a map head needs map ground truth, and a sample of this batch has none "
                         "(a dataset without the map expansion?)")
    return torch.stack([t.map_masks for t in targets]).to(device)


def depth_losses(model: nn.Module, output: Output, batch: Batch) -> dict[str, torch.Tensor]:
    """BEVDepth's depth supervision of a camera-only model by the batch's LiDAR points, weighted
    by `model.camera.depth_loss_weight`; none at weight 0. Training only: the points are read
    here, never by the model's forward. Not for the fusion teacher, as BEVFusion trains its
    fused models without it: its LiDAR branch carries depth, and where GT-paste adds objects
    the LiDAR shows what its images do not, which would teach the camera wrong depths."""
    weight = model.config.model.camera.depth_loss_weight
    if model.modality != "camera" or output.depth_logits is None or weight == 0:
        return {}
    targets = depth_targets(batch, model.config.model.camera)
    return {"depth": depth_loss(output.depth_logits, targets) * weight}
