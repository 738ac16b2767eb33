"""The training loop every run shares: students, the teacher, and the mask generators.

What a run optimises is an `Objective` (a module whose forward gives the loss terms of one
batch); the loop owns the rest: data order, the learning-rate schedule, the optimiser,
progress bar, log.csv, last.pt and resume. Single process or `torchrun --nproc_per_node N`
(DistributedDataParallel over the objective: gloo on CPU, nccl on GPU); rank 0 logs and
checkpoints. Resume is exact: data order and augmentation derive from (seed, epoch, index),
and the learning rate from the step.
"""
from __future__ import annotations

import abc
import csv
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vexkd_core.data.dataset import EpochSampler, collate_training
from vexkd_core.io import atomic_write_text

LAST = "last.pt"
LOG = "log.csv"


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    device: str = "cpu"
    resume: bool = False
    max_steps: int = 0  # overrides the schedule's max_steps when > 0
    max_epochs: int = 0  # overrides the schedule's epochs when > 0
    progress: bool = True


@dataclass(frozen=True)
class Schedule:
    learning_rate: float
    epochs: int
    batch_size: int
    seed: int
    weight_decay: float = 0.01  # AdamW's default
    grad_clip: float | None = None
    max_steps: int = 0  # > 0: stop there
    # False: the learning-rate curve spans all epochs and max_steps only stops early, so a run
    # cut short and resumed follows the same curve as an uninterrupted one. True: the curve
    # ends at max_steps (mask generators on real nuScenes train a fraction of an epoch).
    decay_to_stop: bool = False
    checkpoint_every: int = 0  # steps between last.pt writes; 0: only at the end
    workers: int = 0
    optimizer: str = "adamw"  # or "adam": weight decay as an L2 term in the gradient (MasKD's)
    warmup_fraction: float = 0.05  # of the steps, linear
    final_fraction: float = 0.05  # the cosine ends at this fraction of the peak


class Objective(torch.nn.Module, abc.ABC):
    """What a run optimises. forward(batch, targets) gives named loss terms; the loop
    minimises their sum and logs each. Subclasses say which parameters train, what last.pt
    holds and how a run resumes from it."""

    description = "train"

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def monitored(self) -> dict[str, torch.Tensor]:
        """Values of the last forward logged beside the loss terms, not optimised."""
        return {}

    def checksum(self) -> float:
        """Equal on every rank when the ranks hold the same weights (recorded in last.pt)."""
        return parameter_checksum(self)

    @abc.abstractmethod
    def save_progress(self, path: Path, **progress) -> None:
        """Writes last.pt at `path`: what trains, and `progress` (optimizer state, step, ...)."""

    @abc.abstractmethod
    def restore_progress(self, path: Path) -> dict:
        """Loads the weights of last.pt at `path` and returns its payload (optimizer, step)."""


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def device_of(options: RunOptions) -> torch.device:
    _, _, local_rank = distributed()
    return torch.device(f"cuda:{local_rank}" if options.device == "cuda" else options.device)


def warmup_cosine(peak: float, step: int, total: int, warmup_fraction: float = 0.05,
                  final_fraction: float = 0.05) -> float:
    """Linear warm-up over `warmup_fraction` of the steps (at least one), then cosine decay to
    `final_fraction` of the peak."""
    warmup = max(1, int(warmup_fraction * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def parameter_checksum(module: torch.nn.Module) -> float:
    return float(sum((p.detach().double() * (i + 1)).sum() for i, p in enumerate(module.parameters())))


def run(objective: Objective, dataset: Dataset, schedule: Schedule, options: RunOptions) -> int:
    """Trains `objective` (already on its device) over `dataset`, which must have
    set_epoch(epoch); returns the number of steps taken."""
    rank, world, _ = distributed()
    device = device_of(options)
    run_dir = Path(options.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = objective.trainable()
    if schedule.optimizer not in ("adamw", "adam"):
        raise ValueError(f"optimizer must be adamw or adam, not '{schedule.optimizer}'")
    optimizer_class = torch.optim.AdamW if schedule.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(parameters, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
    step = 0
    if options.resume and (run_dir / LAST).is_file():
        payload = objective.restore_progress(run_dir / LAST)
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])

    epochs = options.max_epochs or schedule.epochs
    sampler = EpochSampler(len(dataset), schedule.batch_size, schedule.seed, rank, world)
    loader = DataLoader(dataset, batch_size=schedule.batch_size, sampler=sampler, collate_fn=collate_training,
                        num_workers=schedule.workers)
    per_epoch = sampler.batches_per_epoch()
    max_steps = options.max_steps or schedule.max_steps
    total = min(epochs * per_epoch, max_steps) if max_steps else epochs * per_epoch
    decay_steps = total if schedule.decay_to_stop else epochs * per_epoch
    network = torch.nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    use_amp = device.type == "cuda"
    bar = tqdm(total=total, initial=step, desc=objective.description, unit="step",
               disable=rank != 0 or not options.progress)
    log_path = run_dir / LOG
    if rank == 0:  # a fresh run's log starts empty; a resumed one drops the rows of steps it redoes
        _keep_log_until(log_path, step)
    while step < total:
        epoch = step // per_epoch
        sampler.set_epoch(epoch, skip_batches=step % per_epoch)
        dataset.set_epoch(epoch)
        objective.train()
        for batch, targets in loader:
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(schedule.learning_rate, step, decay_steps, schedule.warmup_fraction,
                                            schedule.final_fraction)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = network(batch.to(device), targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: {_format(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if schedule.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, schedule.grad_clip)
            optimizer.step()
            step += 1
            if rank == 0:
                _log(log_path, step, epoch, optimizer.param_groups[0]["lr"], loss,
                     {**losses, **objective.monitored()}, time.perf_counter() - started)
                bar.set_postfix_str(f"loss {loss.item():.3f} ({_format(losses)})")
                bar.update()
            if (schedule.checkpoint_every and step % schedule.checkpoint_every == 0) or step == total:
                _save_progress(run_dir / LAST, objective, optimizer, step, epoch, rank, world)
            if step >= total:
                break
    bar.close()
    return step


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


def _keep_log_until(path: Path, step: int) -> None:
    if step == 0 or not path.is_file():
        path.unlink(missing_ok=True)
        return
    rows = path.read_text().splitlines(keepends=True)
    kept = rows[:1] + [row for row in rows[1:] if int(row.split(",", 1)[0]) <= step]
    if len(kept) < len(rows):
        atomic_write_text(path, "".join(kept))


def _save_progress(path: Path, objective: Objective, optimizer, step: int, epoch: int, rank: int, world: int) -> None:
    checksum = objective.checksum()
    checksums = [checksum]
    if world > 1:  # every rank must hold the same weights; say so in the checkpoint
        checksums = [None] * world
        dist.all_gather_object(checksums, checksum)
    if rank == 0:
        objective.save_progress(path, optimizer=optimizer.state_dict(), step=step, epoch=epoch, world_size=world,
                                rank_checksums=checksums)


def median_step_seconds(log: Path) -> float:
    """The median seconds of a run's training steps, from its log.csv (NaN without one)."""
    if not Path(log).is_file():
        return math.nan
    with Path(log).open(newline="") as stream:
        seconds = [float(row["seconds"]) for row in csv.DictReader(stream)]
    return statistics.median(seconds) if seconds else math.nan
