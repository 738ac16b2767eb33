"""The VeXKD model: one BEV model class, as BEVFusion's top-level model, whose modality
says which encoders it has. The teacher and the students are configurations of it:

    fusion (the teacher):  encoders lidar + camera -> fuser (MGFM or ConvFuser) -> decoder -> heads
    lidar, camera (the students): one encoder                                 -> decoder -> heads

The heads are those of `train.tasks` (detection, segmentation) and own their losses. The
model returns its predictions and its BEV features at the decoder's two feature taps:
`low` (the output of the decoder's first, full-resolution stage, right after the fused map
or encoder output; see decoder.py for why it is tapped there) and `high` (the decoder's
output), the maps that masked feature distillation compares.

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
from vexkd_core.modalities import reads, sensors
from vexkd_core.structures import BEVGrid
from vexkd_core.timing import StageTimer

from .camera_encoder import CameraEncoder, LiftGeometry
from .decoder import BEVDecoder
from .depth_supervision import depth_loss, depth_targets
from .detection_head import DetectionHead
from .fusion import FUSERS, MGFM, ConvFuser
from .lidar_encoder import LidarEncoder, pillar_inputs
from .map_head import MapHead

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
    # (B, C, H, W): the fuser's output, the decoder's input; None without a fuser. The mask
    # generators whose query is the fused map read it (mask_generator.QUERIES).
    fused: torch.Tensor | None = None

    def of_task(self, task: str):
        """The predictions of the head of `task` (a train.task_names name)."""
        return self.detection if task == "detection" else self.map_logits


def network_outputs(output: Output) -> dict[str, torch.Tensor]:
    """The predictions of an Output by NETWORK_OUTPUTS name (the ONNX graph's outputs): what
    inference decodes; the heads of tasks the model lacks are left out."""
    outputs = dict(output.detection or {})
    if output.map_logits is not None:
        outputs["map_logits"] = output.map_logits
    return outputs


def _run(timer: StageTimer | None, name: str, function, *args):
    return timer.measure(name, function, *args) if timer is not None else function(*args)


def network_inputs(batch: Batch, modality: str, grid: BEVGrid, lift: LiftGeometry | None) -> dict[str, torch.Tensor]:
    """The tensors of NETWORK_INPUTS[modality] for a batch: the points' pillar inputs and the
    camera frusta's BEV cells (from calibration and augmentation matrices)."""
    inputs = {}
    if reads(modality, "lidar"):
        pillars = pillar_inputs(batch.points, grid, batch.size)
        inputs.update(point_features=pillars.features, pillar_cell=pillars.cell)
    if reads(modality, "camera"):
        inputs.update(images=batch.images, frustum_cell=lift.cells(
            batch.intrinsics, batch.camera_to_lidar, batch.image_transform, batch.lidar_augmentation,
            batch.camera_valid))
    return inputs


def _lidar_encoder(config: Config) -> LidarEncoder:
    return LidarEncoder(config.grid.bev, config.model.lidar.pillar_channels)


def _camera_encoder(config: Config) -> CameraEncoder:
    return CameraEncoder(config.model.camera, config.grid.bev, (config.grid.z_min_m, config.grid.z_max_m),
                         config.model.bev_channels)


ENCODER_BUILDERS = {"lidar": _lidar_encoder, "camera": _camera_encoder}


def _fuser(config: Config, lidar_channels: int, camera_channels: int) -> nn.Module:
    """`model.fuser`: the MGFM, or BEVFusion's ConvFuser."""
    grid, model = config.grid.bev, config.model
    if model.fuser == "mgfm":
        return MGFM(lidar_channels, camera_channels, model.bev_channels, grid.height, grid.width, model.fusion)
    if model.fuser == "convfuser":
        return ConvFuser(lidar_channels, camera_channels, model.bev_channels)
    raise ValueError(f"model.fuser must be one of {FUSERS}, not '{model.fuser}'")


def _heads(config: Config, in_channels: int) -> nn.ModuleDict:
    """The heads of `train.tasks` by task name, built (and so initialised) detection first."""
    model, tasks = config.model, config.train.task_names
    heads = nn.ModuleDict()
    if "detection" in tasks:
        heads["detection"] = DetectionHead(in_channels, model.head_channels, len(DETECTION_CLASSES), config.grid.bev)
    if "segmentation" in tasks:
        heads["segmentation"] = MapHead(in_channels, model.head_channels, len(MAP_CLASSES), config.grid.bev,
                                        config.map_grid.bev)
    return heads


class BEVModel(nn.Module):
    """Encoders (one per sensor the modality reads) -> fuser (with both) -> decoder -> heads.

    Its interface, for the trainer, the distiller, the mask generators, export and the nodes:
    forward / network, `has(sensor)`, `feature_channels` of the taps, `losses` (and its parts
    `task_losses`, `depth_losses`, `box_targets`), `task_loss` of a head from a tap's feature
    (`task_predictions`), `load_lidar_branch`. `modality` names the configuration
    (checkpoints, sidecars, nodes); what the architecture has is asked of the model.
    """

    def __init__(self, config: Config, modality: str):
        super().__init__()
        self.config, self.modality = config, modality
        self.encoders = nn.ModuleDict({sensor: ENCODER_BUILDERS[sensor](config) for sensor in sensors(modality)})
        channels = [encoder.out_channels for encoder in self.encoders.values()]
        self.fuser = _fuser(config, *channels) if len(channels) == 2 else None
        encoded_channels = self.fuser.out_channels if self.fuser is not None else channels[0]
        self.decoder = BEVDecoder(encoded_channels, config.model.decoder_channels, config.model.decoder_out_channels)
        self.heads = _heads(config, self.decoder.out_channels)

    # ------------------------------------------------------------------ architecture
    def has(self, sensor: str) -> bool:
        """Whether the model reads `sensor` ("lidar" or "camera")."""
        return sensor in self.encoders

    @property
    def lidar_encoder(self) -> LidarEncoder | None:
        return self.encoders["lidar"] if self.has("lidar") else None

    @property
    def camera_encoder(self) -> CameraEncoder | None:
        return self.encoders["camera"] if self.has("camera") else None

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of the feature taps, by level (what distillation compares)."""
        return {"low": self.decoder.low_channels, "high": self.decoder.out_channels}

    def load_lidar_branch(self, lidar_model: BEVModel) -> None:
        """Start from a trained LiDAR model: its encoder, decoder and heads (BEVFusion's
        practice of pre-training the LiDAR branch before fine-tuning the fused model)."""
        if tuple(lidar_model.encoders) != ("lidar",) or not self.has("lidar"):
            raise ValueError(f"the teacher's LiDAR branch needs a lidar model, not {lidar_model.modality}")
        if lidar_model.config.train.task_names != self.config.train.task_names:
            raise ValueError(f"the LiDAR model was trained for train.tasks={lidar_model.config.train.tasks}, "
                             f"the teacher is set up for {self.config.train.tasks}")
        self.encoders["lidar"].load_state_dict(lidar_model.encoders["lidar"].state_dict())
        self.decoder.load_state_dict(lidar_model.decoder.state_dict())
        self.heads.load_state_dict(lidar_model.heads.state_dict())

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch, timer: StageTimer | None = None) -> Output:
        lift = self.camera_encoder.geometry if self.has("camera") else None
        inputs = _run(timer, "inputs", network_inputs, batch, self.modality, self.config.grid.bev, lift)
        return self.network(inputs, batch.size, timer)

    def network(self, inputs: dict[str, torch.Tensor], batch_size: int, timer: StageTimer | None = None) -> Output:
        """Everything with weights, from the tensors of NETWORK_INPUTS[modality]."""
        encoded, depth_logits = [], None
        if self.has("lidar"):
            encoded.append(_run(timer, "lidar_encoder", self.encoders["lidar"].encode_pillars,
                                inputs["point_features"], inputs["pillar_cell"], batch_size))
        if self.has("camera"):
            camera, depth_logits = _run(timer, "camera_encoder", self.encoders["camera"].encode_cells,
                                        inputs["images"], inputs["frustum_cell"])
            encoded.append(camera)
        bev = _run(timer, "fusion", self.fuser, *encoded) if self.fuser is not None else encoded[0]
        low, high = _run(timer, "decoder", self._decode, bev)
        detection = _run(timer, "detection_head", self.heads["detection"], high) if "detection" in self.heads \
            else None
        map_logits = _run(timer, "map_head", self.heads["segmentation"], high) if "segmentation" in self.heads \
            else None
        return Output(detection, map_logits, low, high, depth_logits, bev if self.fuser is not None else None)

    def _decode(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.decoder.first_stage(bev)
        return low, self.decoder.from_first_stage(low)

    def task_predictions(self, task: str, level: str, feature: torch.Tensor):
        """The `task` head's predictions from a feature at tap `level` (low: through the rest of the decoder)."""
        return self.heads[task](self.decoder.from_tap(level, feature))

    # ------------------------------------------------------------------ losses
    def box_targets(self, targets: list[Targets], device) -> dict[str, torch.Tensor] | None:
        """The detection head's targets of a batch (None without one): computed once per step,
        read by the task loss and by distillation's ground-truth masks."""
        return self.heads["detection"].batch_targets(targets, device) if "detection" in self.heads else None

    def task_loss(self, task: str, predictions, targets: list[Targets],
                  box_targets: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of the head of `task` for its `predictions`, its terms summed, unweighted."""
        return sum(self.heads[task].losses(predictions, targets, box_targets).values())

    def task_losses(self, output: Output, targets: list[Targets],
                    box_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Detection (heatmap + box) and map losses of the model's tasks, weighted by the training
        config; `box_targets`: `box_targets(...)` when the caller has them already."""
        train = self.config.train
        weights = {"detection": train.detection_weight, "segmentation": train.map_weight}
        return {name: value * weights[task] for task, head in self.heads.items()
                for name, value in head.losses(output.of_task(task), targets, box_targets).items()}

    def depth_losses(self, output: Output, batch: Batch) -> dict[str, torch.Tensor]:
        """BEVDepth's depth supervision of a camera-only model by the batch's LiDAR points, weighted
        by `model.camera.depth_loss_weight`; none at weight 0. Training only: the points are read
        here, never by the model's forward. Not for a fused model, as BEVFusion trains its fused
        models without it: its LiDAR branch carries depth, and where GT-paste adds objects the
        LiDAR shows what its images do not, which would teach the camera wrong depths."""
        weight = self.config.model.camera.depth_loss_weight
        if self.fuser is not None or output.depth_logits is None or weight == 0:
            return {}
        targets = depth_targets(batch, self.config.model.camera)
        return {"depth": depth_loss(output.depth_logits, targets) * weight}

    def losses(self, output: Output, targets: list[Targets], batch: Batch,
               box_targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Every training loss of the model: its heads' (task_losses), then depth supervision."""
        losses = self.task_losses(output, targets, box_targets)
        losses.update(self.depth_losses(output, batch))
        return losses


def build_model(config: Config, modality: str) -> BEVModel:
    """The teacher ("fusion") or a student ("lidar", "camera") of `config`."""
    return BEVModel(config, modality)


def initial_model(config: Config, modality: str) -> BEVModel:
    """build_model after seeding torch with the config's seed, so the same config starts from
    the same weights: how training starts a model, and how a tool rebuilds that start."""
    torch.manual_seed(config.train.seed)
    return build_model(config, modality)
