"""Training a BEV model (a student, or the teacher), with a distiller's losses when one is given.

The loop is vexkd_train.loop's; here is what a model run optimises (its heads' losses plus
the distiller's), what its last.pt holds, and what it delivers: model.pt, the weights and
config with the dataset they were trained on, no optimizer state.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vexkd_core.checkpoint import load_checkpoint, save_checkpoint
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import Config
from vexkd_core.data.cbgs import balanced_indices, sample_classes
from vexkd_core.data.dataset import TrainingSet, require_map_ground_truth
from vexkd_core.data.gt_paste import training_paster
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.errors import CheckpointError
from vexkd_core.models.vexkd import BEVModel
from vexkd_core.training_data import TrainingData
from vexkd_train import loop
from vexkd_train.loop import RunOptions, Schedule

FINAL = "model.pt"
LAST = loop.LAST

__all__ = ["FINAL", "LAST", "RunOptions", "train"]


class ModelObjective(loop.Objective):
    """The model's task losses and, with a distiller, its distillation losses
    (`distiller(model, batch, output, targets, box_targets)`). The distiller's trainable
    parameters (adapters) are optimised and kept in last.pt for resuming; its frozen ones
    (teacher, mask generators) stay as they are."""

    def __init__(self, model: BEVModel, modality: str, training_data: TrainingData,
                 distiller: torch.nn.Module | None = None):
        super().__init__()
        if distiller is not None and {id(p) for p in distiller.parameters()} & {id(p) for p in model.parameters()}:
            raise ValueError("the distiller holds the model's own parameters: AdamW would step them twice per step")
        self.model, self.distiller = model, distiller
        self.modality, self.training_data = modality, training_data
        self.description = f"train {modality}"

    def train(self, mode: bool = True) -> "ModelObjective":
        # Only the model: the distiller's teacher and generators keep their frozen BatchNorm statistics.
        self.training = mode
        self.model.train(mode)
        return self

    def forward(self, batch, targets) -> dict[str, torch.Tensor]:
        output = self.model(batch)
        box_targets = self.model.box_targets(targets, output.low.device)
        losses = self.model.losses(output, targets, batch, box_targets)
        if self.distiller is not None:
            losses.update(self.distiller(self.model, batch, output, targets, box_targets))
        return losses

    def checksum(self) -> float:
        return loop.parameter_checksum(self.model)

    def save_progress(self, path: Path, **progress) -> None:
        trained = {} if self.distiller is None else \
            {name: p.detach() for name, p in self.distiller.named_parameters() if p.requires_grad}
        save_checkpoint(path, self.model, self.model.config, self.modality, self.training_data, auxiliary=trained,
                        **progress)

    def restore_progress(self, path: Path) -> dict:
        payload = load_checkpoint(path)
        if payload["modality"] != self.modality or payload["config"] != self.model.config.to_dict():
            raise CheckpointError(f"{path} was trained with another modality or config; "
                                  "use a new --out or the same settings")
        self.model.load_state_dict(payload["model"])
        if self.distiller is not None:
            self.distiller.load_state_dict(payload["auxiliary"], strict=False)
        return payload


def train(model: BEVModel, config: Config, source: NuScenesSource, modality: str, options: RunOptions,
          auxiliary: torch.nn.Module | None = None) -> Path:
    """Train `model`; returns the final checkpoint, which holds the model alone and, as last.pt
    does, the dataset it was trained on (TrainingData). `auxiliary`: the distiller."""
    require_map_ground_truth(source, config)
    training_data = TrainingData.of_source(source)
    objective = ModelObjective(model, modality, training_data, auxiliary).to(loop.device_of(options))
    train_settings = config.train
    epochs = options.max_epochs or train_settings.epochs
    indices = balanced_indices(sample_classes(source), len(DETECTION_CLASSES), train_settings.seed) \
        if train_settings.cbgs else None
    # Pasted objects are points without images; sensor dropout is for a model that reads both.
    paster = training_paster(config, source, reads_lidar=model.has("lidar"), epochs=epochs)
    fused = model.has("lidar") and model.has("camera")
    dataset = TrainingSet(source, config, augment=train_settings.augment, indices=indices, paster=paster,
                          sensor_dropout=train_settings.teacher_sensor_dropout if fused else 0.0)
    schedule = Schedule(train_settings.learning_rate, train_settings.epochs, train_settings.batch_size,
                        train_settings.seed, weight_decay=train_settings.weight_decay,
                        grad_clip=train_settings.grad_clip, max_steps=train_settings.max_steps,
                        checkpoint_every=train_settings.checkpoint_every, workers=train_settings.workers)
    step = loop.run(objective, dataset, schedule, options)
    rank, world, _ = loop.distributed()
    run_dir = Path(options.run_dir)
    if rank == 0:
        save_checkpoint(run_dir / FINAL, model, config, modality, training_data, step=step)
    if world > 1:
        torch.distributed.barrier()
    return run_dir / FINAL
