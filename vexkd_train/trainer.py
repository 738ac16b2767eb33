"""The training loop every stage shares (teacher, students; distillation adds a loss).

Single process or `torchrun --nproc_per_node N` (DistributedDataParallel: gloo on CPU,
nccl on GPU). Rank 0 logs and checkpoints. Resume is exact: data order and augmentation
derive from (seed, epoch, index), and the learning rate from the step.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from vexkd_core.checkpoint import load_checkpoint, save_checkpoint
from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.config import Config
from vexkd_core.data.cbgs import balanced_indices, sample_classes
from vexkd_core.data.dataset import EpochSampler, TrainingSet, collate_training, require_map_ground_truth
from vexkd_core.data.gt_paste import training_paster
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.errors import CheckpointError
from vexkd_core.models.vexkd import BEVModel
from vexkd_core.training_data import TrainingData

LAST = "last.pt"
FINAL = "model.pt"


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    device: str = "cpu"
    resume: bool = False
    max_steps: int = 0  # overrides config.train.max_steps when > 0
    max_epochs: int = 0  # overrides config.train.epochs when > 0
    progress: bool = True


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def learning_rate(config: Config, step: int, total: int) -> float:
    return warmup_cosine(config.train.learning_rate, step, total)


def warmup_cosine(peak: float, step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 5% of the peak."""
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def parameter_checksum(model: torch.nn.Module) -> float:
    return float(sum((p.detach().double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def train(model: BEVModel, config: Config, source: NuScenesSource, modality: str, options: RunOptions,
          auxiliary: torch.nn.Module | None = None) -> Path:
    """Train `model`; returns the final checkpoint, which holds the model alone and, as last.pt
    does, the dataset it was trained on (TrainingData).

    `auxiliary` (the distiller) adds its losses through `auxiliary(model, batch, output,
    targets, box_targets)`; its trainable parameters (adapters) are optimised and saved in last.pt for
    resuming, its frozen ones (teacher, mask generators) only moved to the device.
    """
    require_map_ground_truth(source, config)
    training_data = TrainingData.of_source(source)
    rank, world, local_rank = distributed()
    device = torch.device(f"cuda:{local_rank}" if options.device == "cuda" else options.device)
    run_dir = Path(options.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if auxiliary is not None:
        auxiliary.to(device)
        if {id(p) for p in auxiliary.parameters()} & {id(p) for p in model.parameters()}:
            raise ValueError("the distiller holds the model's own parameters: AdamW would step them twice per step")
        parameters += [p for p in auxiliary.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    step = 0
    if options.resume and (run_dir / LAST).is_file():
        payload = load_checkpoint(run_dir / LAST)
        if payload["modality"] != modality or payload["config"] != config.to_dict():
            raise CheckpointError(f"{run_dir / LAST} was trained with another modality or config; "
                                  "use a new --out or the same settings")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if auxiliary is not None:
            auxiliary.load_state_dict(payload["auxiliary"], strict=False)
        step = int(payload["step"])

    epochs = options.max_epochs or config.train.epochs
    indices = balanced_indices(sample_classes(source), len(DETECTION_CLASSES), config.train.seed) \
        if config.train.cbgs else None
    # Pasted objects are points without images; sensor dropout is for a model that reads both.
    paster = training_paster(config, source, reads_lidar=model.has("lidar"), epochs=epochs)
    fused = model.has("lidar") and model.has("camera")
    dataset = TrainingSet(source, config, augment=config.train.augment, indices=indices, paster=paster,
                          sensor_dropout=config.train.teacher_sensor_dropout if fused else 0.0)
    sampler = EpochSampler(len(dataset), config.train.batch_size, config.train.seed, rank, world)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, sampler=sampler, collate_fn=collate_training,
                        num_workers=config.train.workers)
    per_epoch = sampler.batches_per_epoch()
    # The schedule spans the configured epochs; --max-steps only stops early, so a run cut
    # short and resumed follows the same learning-rate curve as an uninterrupted one.
    schedule = epochs * per_epoch
    total = min(schedule, options.max_steps or config.train.max_steps or schedule)
    network = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    use_amp = device.type == "cuda"
    bar = tqdm(total=total, initial=step, desc=f"train {modality}", unit="step", disable=rank != 0 or not options.progress)
    log_path = run_dir / "log.csv"
    if step == 0 and rank == 0:
        log_path.unlink(missing_ok=True)  # a fresh run's log starts empty, not after an earlier run's rows
    while step < total:
        epoch = step // per_epoch
        sampler.set_epoch(epoch, skip_batches=step % per_epoch)
        dataset.set_epoch(epoch)
        model.train()
        for batch, targets in loader:
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, schedule)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                batch = batch.to(device)
                output = network(batch)
                box_targets = model.box_targets(targets, device)
                losses = model.losses(output, targets, batch, box_targets)
                if auxiliary is not None:
                    losses.update(auxiliary(model, batch, output, targets, box_targets))
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: {_format(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.train.grad_clip)
            optimizer.step()
            step += 1
            if rank == 0:
                _log(log_path, step, epoch, optimizer.param_groups[0]["lr"], loss, losses,
                     time.perf_counter() - started)
                bar.set_postfix_str(f"loss {loss.item():.3f} ({_format(losses)})")
                bar.update()
            if step % config.train.checkpoint_every == 0 or step == total:
                _checkpoint(run_dir / LAST, model, optimizer, config, modality, step, epoch, rank, world, auxiliary,
                            training_data)
            if step >= total:
                break
    bar.close()
    if rank == 0:  # the deliverable: weights and config, no optimizer state
        save_checkpoint(run_dir / FINAL, model, config, modality, training_data, step=step)
    if world > 1:
        dist.barrier()
    return run_dir / FINAL


def _format(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{name} {value.item():.3f}" for name, value in losses.items())


def _log(path: Path, step: int, epoch: int, lr: float, loss, losses: dict, seconds: float) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as stream:
        writer = csv.writer(stream)
        if new:
            writer.writerow(["step", "epoch", "lr", "loss", *losses, "seconds"])
        writer.writerow([step, epoch, f"{lr:.6g}", f"{loss.item():.6f}", *(f"{v.item():.6f}" for v in losses.values()),
                         f"{seconds:.3f}"])


def _checkpoint(path: Path, model, optimizer, config: Config, modality: str, step: int, epoch: int,
                rank: int, world: int, auxiliary: torch.nn.Module | None, training_data: TrainingData) -> None:
    checksum = parameter_checksum(model)
    checksums = [checksum]
    if world > 1:  # every rank must hold the same weights; say so in the checkpoint
        checksums = [None] * world
        dist.all_gather_object(checksums, checksum)
    if rank == 0:
        trained_auxiliary = {} if auxiliary is None else \
            {name: p.detach() for name, p in auxiliary.named_parameters() if p.requires_grad}
        save_checkpoint(path, model, config, modality, training_data, optimizer=optimizer.state_dict(), step=step,
                        epoch=epoch, world_size=world, rank_checksums=checksums, auxiliary=trained_auxiliary)
