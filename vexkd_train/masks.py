"""Train the mask generators of a frozen teacher (one per task x feature level).

For a generator at a level, the teacher's feature there is replaced by the mask-weighted
feature and passed through the frozen rest of the teacher; the generator minimises that
task's loss (averaged over its T masks) plus a Dice penalty that keeps the masks diverse
(the MasKD recipe). The teacher's weights never change.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vexkd_core.checkpoint import CheckpointError, model_from_checkpoint, read_payload
from vexkd_core.data.dataset import EpochSampler, TrainingSet, collate_training
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.distill.mask_generator import LEVELS, TASKS, MaskGenerator, dice_overlap
from vexkd_core.io import atomic_write_bytes

MASKS_FORMAT = 1


@dataclass(frozen=True)
class MaskSettings:
    masks_per_generator: int = 2
    blocks: int = 3
    random_query: bool = False
    diversity_weight: float = 1.0
    learning_rate: float = 2e-3
    epochs: int = 3


def build_generators(teacher, settings: MaskSettings, seed: int = 0) -> dict[str, MaskGenerator]:
    fusion, config = teacher.fusion, teacher.config.model.fusion
    channels = {"low": fusion.out_channels, "high": teacher.heads.decoder.out_channels}
    return {f"{task}/{level}": MaskGenerator.from_teacher(
        fusion, channels[level], settings.masks_per_generator, settings.blocks, config.heads, config.points,
        config.ffn_channels, random_query=settings.random_query, seed=seed)
        for task in TASKS for level in LEVELS}


def generator_loss(teacher, key: str, generator: MaskGenerator, feature_low, feature_high, targets,
                   settings: MaskSettings) -> torch.Tensor:
    """That task's teacher loss with the feature replaced by each mask-weighted copy, plus diversity."""
    task, level = key.split("/")
    feature = feature_low if level == "low" else feature_high
    masks = generator(feature)
    count = masks.shape[1]
    # All T masked copies go through the frozen rest of the teacher as one batch.
    masked = (feature[:, None] * masks[:, :, None]).flatten(0, 1)
    high = teacher.heads.decoder(masked) if level == "low" else masked
    repeated = [target for target in targets for _ in range(count)]
    if task == "detection":
        head = teacher.heads.detection_head
        loss = sum(head.loss(head(high), head.targets([t.boxes for t in repeated], high.device)).values())
    else:
        target = torch.stack([t.map_masks for t in repeated]).to(high.device)
        loss = teacher.heads.map_head.loss(teacher.heads.map_head(high), target)
    return loss + settings.diversity_weight * dice_overlap(masks)


def train_masks(teacher_checkpoint: Path, source: NuScenesSource, out: Path, settings: MaskSettings,
                device: str = "cpu", progress: bool = True) -> Path:
    teacher, config, payload = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    teacher = freeze(teacher).to(device)
    torch.manual_seed(config.train.seed)
    generators = build_generators(teacher, settings, config.train.seed)
    modules = torch.nn.ModuleDict({k.replace("/", "__"): g for k, g in generators.items()}).to(device)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=settings.learning_rate)
    dataset = TrainingSet(source, config, augment=config.train.augment)
    sampler = EpochSampler(len(dataset), config.train.batch_size, config.train.seed)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, sampler=sampler, collate_fn=collate_training)
    total = settings.epochs * sampler.batches_per_epoch()
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, desc="train mask generators", unit="step", disable=not progress)
    with (out / "masks_log.csv").open("w", newline="") as stream:
        log = csv.writer(stream)
        log.writerow(["step", *generators])
        step = 0
        for epoch in range(settings.epochs):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for batch, targets in loader:
                batch = batch.to(device)
                with torch.no_grad():
                    output = teacher(batch)
                losses = {key: generator_loss(teacher, key, generator, output.low, output.high, targets, settings)
                          for key, generator in generators.items()}
                optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimizer.step()
                step += 1
                log.writerow([step, *(f"{v.item():.5f}" for v in losses.values())])
                bar.set_postfix_str(", ".join(f"{k} {v.item():.3f}" for k, v in losses.items()))
                bar.update()
    bar.close()
    return save_masks(out / "masks.pt", generators, settings, payload["config"], teacher_checkpoint)


def save_masks(path: Path, generators: dict[str, MaskGenerator], settings: MaskSettings, teacher_config: dict,
               teacher_checkpoint: Path) -> Path:
    import io

    payload = {"format_version": MASKS_FORMAT, "kind": "mask_generators", "settings": asdict(settings),
               "teacher_config": teacher_config, "teacher_checkpoint": str(teacher_checkpoint),
               "generators": {key: generator.state_dict() for key, generator in generators.items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_masks(path: Path, teacher) -> dict[str, MaskGenerator]:
    """Generators for `teacher`, which must be the teacher they were trained with."""
    payload = read_payload(path, "mask generators")
    if payload.get("kind") != "mask_generators":
        raise CheckpointError(f"{path} holds no vexkd mask generators")
    if payload["teacher_config"] != teacher.config.to_dict():
        raise CheckpointError(f"{path} was trained for a teacher with another config")
    settings = MaskSettings(**payload["settings"])
    generators = build_generators(teacher, settings)
    for key, generator in generators.items():
        generator.load_state_dict(payload["generators"][key])
    return generators


@torch.no_grad()
def export_masks(teacher_checkpoint: Path, masks_path: Path, source: NuScenesSource, out: Path,
                 device: str = "cpu", progress: bool = True) -> Path:
    """The generated masks of every sample of `source` (no augmentation), in one .npz:
    key '<sample token>/<task>/<level>' -> (T, H, W) float16 at that feature's resolution."""
    import io

    import numpy as np

    from vexkd_core.data.preprocess import collate, preprocess

    teacher, config, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    teacher.to(device)
    generators = {key: generator.to(device).eval() for key, generator in load_masks(masks_path, teacher).items()}
    arrays = {}
    for index in tqdm(range(len(source)), desc="export masks", unit="sample", disable=not progress):
        sample = source.sample(index)
        output = teacher(collate([preprocess(sample, config)[0]]).to(device))
        features = {"low": output.low, "high": output.high}
        for key, generator in generators.items():
            task, level = key.split("/")
            arrays[f"{sample.token}/{task}/{level}"] = generator(features[level])[0].cpu().numpy().astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(out, buffer.getvalue())
