"""Train the mask generators of a frozen teacher (one per task x feature level).

The objective, per generator with T masks m_1..m_T over the teacher's feature F at its level:

    (1/T) sum_t TaskLoss(teacher_rest(m_t * F))     each mask alone must keep that task working
  + diversity_weight * mean Dice(m_i, m_j), i < j   the T masks must pick different cells
  + area_weight * mean_t relu(mean(m_t) - area_budget)   no mask may cover more than its budget
  + binary_weight * mean m (1 - m)                  a mask says where: each cell kept or not

where teacher_rest is the frozen rest of the teacher after that level. Without the budget
the optimum is m = 1 (the teacher was trained unmasked, so its loss is lowest on the whole
map) and Dice alone is satisfied by one mask of ones and T - 1 masks of zeros: that is what
the first version converged to. With the budget, a mask has to spend its area where the
task loss needs the feature most; with Dice over all pairs, each mask spends it elsewhere.
The last term rules out the remaining way around the budget, a mask of 0.25 everywhere: a
spatially uniform mask rescales the feature rather than selecting from it, and under
attention transfer (which normalises after masking) it is whole-map distillation again.
(MasKD instead sums token-weighted masked copies into one feature; with softmax token
weights that sum collapses onto one token of ones just the same, so it is not used here.
Tried on the demo world and dropped: the soft union of the masks as the one masked copy,
which left every segmentation mask uniform and the detection masks less selective; and a
5x learning rate, which made the detection masks more selective but alike, and drove most
segmentation masks to zero.)
The teacher's weights never change.
"""
from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vexkd_core.checkpoint import CheckpointError, model_from_checkpoint, read_payload
from vexkd_core.data.dataset import EpochSampler, TrainingSet, collate_training
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.distill.mask_generator import LEVELS, MaskGenerator, area_excess, dice_overlap, indecision
from vexkd_core.io import atomic_npz, atomic_write_bytes, atomic_write_json
from vexkd_train.trainer import warmup_cosine

MASKS_FORMAT = 2


@dataclass(frozen=True)
class MaskSettings:
    masks_per_generator: int = 6  # MasKD uses 6-8 tokens
    blocks: int = 3
    random_query: bool = False
    diversity_weight: float = 1.0
    area_budget: float = 0.25  # the largest share of the map one mask may cover
    area_weight: float = 10.0
    binary_weight: float = 1.0
    learning_rate: float = 2e-3
    epochs: int = 4
    max_steps: int = 0  # > 0: stop there (and schedule for it); real nuScenes needs a fraction of an epoch

    def validate(self) -> None:
        if self.masks_per_generator < 1:
            raise ValueError("--masks-per-generator must be at least 1")
        if self.blocks < 1:
            raise ValueError("--blocks must be at least 1")
        if not 0.0 < self.area_budget <= 1.0:
            raise ValueError(f"--area-budget must be in (0, 1], not {self.area_budget}")
        if self.epochs < 1:
            raise ValueError("--max-epochs must be at least 1")
        if self.max_steps < 0:
            raise ValueError("--max-steps must be 0 (all of the epochs) or more")


def build_generators(teacher, settings: MaskSettings, seed: int = 0) -> dict[str, MaskGenerator]:
    config = teacher.config
    fusion = config.model.fusion
    decoder = teacher.heads.decoder
    channels = {"low": decoder.low_channels, "high": decoder.out_channels}
    grid = config.grid.bev
    # A fuser without a query (ConvFuser) gets a random one on the grid an MGFM of this
    # config would have, so the ConvFuser / MGFM comparison is like for like.
    query_size = (grid.height // fusion.downsample, grid.width // fusion.downsample)
    return {f"{task}/{level}": MaskGenerator.from_teacher(
        teacher.fusion, channels[level], settings.masks_per_generator, settings.blocks, fusion.heads, fusion.points,
        fusion.ffn_channels, random_query=settings.random_query, seed=seed, query_size=query_size,
        query_dim=config.model.bev_channels)
        for task in config.train.task_names for level in LEVELS}


@dataclass
class GeneratorLoss:
    task: torch.Tensor
    diversity: torch.Tensor
    area: torch.Tensor
    indecision: torch.Tensor

    def total(self, settings: MaskSettings) -> torch.Tensor:
        return (self.task + settings.diversity_weight * self.diversity + settings.area_weight * self.area
                + settings.binary_weight * self.indecision)


def masked_task_loss(teacher, task: str, level: str, feature: torch.Tensor, masks: torch.Tensor, targets,
                     detection_targets: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The teacher's loss for `task` with its feature at `level` replaced by each masked copy
    (all T copies through the frozen rest of the teacher as one batch), averaged over them.
    `detection_targets` may carry the heads' targets for the T-fold repeated batch."""
    count = masks.shape[1]
    masked = (feature[:, None] * masks[:, :, None]).flatten(0, 1)
    heads = teacher.heads
    high = heads.decoder.from_first_stage(masked) if level == "low" else masked
    if task == "detection":
        if detection_targets is None:
            detection_targets = repeated_detection_targets(teacher, targets, count, high.device)
        return sum(heads.detection_head.loss(heads.detection_head(high), detection_targets).values())
    target = torch.stack([t.map_masks for t in targets for _ in range(count)]).to(high.device)
    return heads.map_head.loss(heads.map_head(high), target)


def repeated_detection_targets(teacher, targets, count: int, device) -> dict[str, torch.Tensor]:
    return teacher.heads.detection_head.targets([t.boxes for t in targets for _ in range(count)], device)


def generator_loss(teacher, key: str, generator: MaskGenerator, features: dict[str, torch.Tensor], targets,
                   settings: MaskSettings, detection_targets=None) -> GeneratorLoss:
    task, level = key.split("/")
    masks = generator(features[level])
    return GeneratorLoss(masked_task_loss(teacher, task, level, features[level], masks, targets, detection_targets),
                         dice_overlap(masks), area_excess(masks, settings.area_budget), indecision(masks))


def train_masks(teacher_checkpoint: Path, source: NuScenesSource, out: Path, settings: MaskSettings,
                device: str = "cpu", progress: bool = True, report_source: NuScenesSource | None = None) -> Path:
    """Train, write masks.pt and masks_log.csv (every term of every generator per step) and,
    on `report_source` (default: the training source), selectivity.json and selectivity.md."""
    settings.validate()
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
    total = min(total, settings.max_steps) if settings.max_steps else total
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, desc="train mask generators", unit="step", disable=not progress)
    with (out / "masks_log.csv").open("w", newline="") as stream:
        log = csv.writer(stream)
        log.writerow(["step", *(f"{key}/{term}" for key in generators
                                for term in ("total", "task", "dice", "area", "indecision")), "seconds"])
        step = 0
        for epoch in range(settings.epochs):
            if step >= total:
                break
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for batch, targets in loader:
                started = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(settings.learning_rate, step, total)
                batch = batch.to(device)
                with torch.no_grad():
                    output = teacher(batch)
                    detection_targets = repeated_detection_targets(
                        teacher, targets, settings.masks_per_generator, output.low.device) \
                        if teacher.heads.detection_head else None
                features = {"low": output.low, "high": output.high}
                losses = {key: generator_loss(teacher, key, generator, features, targets, settings, detection_targets)
                          for key, generator in generators.items()}
                totals = {key: loss.total(settings) for key, loss in losses.items()}
                optimizer.zero_grad(set_to_none=True)
                sum(totals.values()).backward()
                optimizer.step()
                step += 1
                log.writerow([step, *(f"{v.item():.5f}" for key, loss in losses.items()
                                      for v in (totals[key], loss.task, loss.diversity, loss.area, loss.indecision)),
                              f"{time.perf_counter() - started:.3f}"])
                bar.set_postfix_str(", ".join(f"{k} {v.item():.3f}" for k, v in totals.items()))
                bar.update()
                if step >= total:
                    break
    bar.close()
    path = save_masks(out / "masks.pt", generators, settings, config.to_dict(), teacher_checkpoint)
    write_selectivity(teacher, generators, report_source or source, out, device, progress)
    return path


@torch.no_grad()
def measure_selectivity(teacher, generators: dict[str, MaskGenerator], source: NuScenesSource, device: str = "cpu",
                        progress: bool = True) -> dict[str, list[dict]]:
    """Selectivity of every generator's masks over the samples of `source`, unaugmented."""
    from vexkd_core.data.preprocess import Augmentation, collate, map_targets, preprocess
    from vexkd_core.distill.selectivity import SelectivityMeter, as_report, box_footprints

    config = teacher.config
    grid = config.grid.bev
    meters = {key: SelectivityMeter(key.split("/")[0]) for key in generators}
    for index in tqdm(range(len(source)), desc="mask selectivity", unit="sample", disable=not progress):
        sample = source.sample(index)
        inputs, targets = preprocess(sample, config)
        output = teacher(collate([inputs]).to(device))
        # A split without annotations (nuScenes test) still gets the mask-only statistics.
        regions = {"detection": None if targets is None else box_footprints(targets.boxes, grid),
                   "segmentation": None if sample.map_masks is None
                   else map_targets(sample, Augmentation(), grid).numpy().max(axis=0) > 0.5}
        for key, generator in generators.items():
            task, level = key.split("/")
            meters[key].add(generator.eval()(getattr(output, level))[0], regions[task])
    return as_report(meters)


def write_selectivity(teacher, generators, source: NuScenesSource, out: Path, device: str, progress: bool) -> dict:
    from vexkd_core.distill.selectivity import selectivity_table

    report = measure_selectivity(teacher, generators, source, device, progress)
    atomic_write_json(out / "selectivity.json", report)
    atomic_write_bytes(out / "selectivity.md", (selectivity_table(report) + "\n").encode())
    return report


def save_masks(path: Path, generators: dict[str, MaskGenerator], settings: MaskSettings, teacher_config: dict,
               teacher_checkpoint: Path) -> Path:
    import io

    payload = {"format_version": MASKS_FORMAT, "kind": "mask_generators", "settings": asdict(settings),
               "teacher_config": teacher_config, "teacher_checkpoint": str(teacher_checkpoint),
               "generators": {key: generator.state_dict() for key, generator in generators.items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_masks(path: Path, teacher, random_query: bool | None = None) -> dict[str, MaskGenerator]:
    """Generators for `teacher`, which must be the teacher they were trained with; with
    `random_query` given, they must also be of that kind (fusion query or random)."""
    payload = read_payload(path, "mask generators")
    if payload.get("kind") != "mask_generators":
        raise CheckpointError(f"{path} holds no vexkd mask generators")
    if payload.get("format_version") != MASKS_FORMAT:
        raise CheckpointError(f"{path} has mask-generator format {payload.get('format_version')}, this vexkd reads "
                              f"{MASKS_FORMAT}: train them again with vexkd-train masks")
    if payload["teacher_config"] != teacher.config.to_dict():
        raise CheckpointError(f"{path} was trained for a teacher with another config")
    settings = MaskSettings(**payload["settings"])
    if random_query is not None and settings.random_query != random_query:
        kind = lambda random: "random-query" if random else "fusion-query"  # noqa: E731
        raise CheckpointError(f"{path} holds {kind(settings.random_query)} generators, not {kind(random_query)} ones")
    generators = build_generators(teacher, settings)
    for key, generator in generators.items():
        generator.load_state_dict(payload["generators"][key])
    return generators


@torch.no_grad()
def export_masks(teacher_checkpoint: Path, masks_path: Path, source: NuScenesSource, out: Path,
                 device: str = "cpu", progress: bool = True) -> Path:
    """The generated masks of every sample of `source` (no augmentation), in one .npz:
    key '<sample token>/<task>/<level>' -> (T, H, W) float16 at that feature's resolution.
    Written sample by sample: a nuScenes split's masks run to gigabytes."""
    import numpy as np

    from vexkd_core.data.preprocess import collate, preprocess

    teacher, config, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    teacher.to(device)
    generators = {key: generator.to(device).eval() for key, generator in load_masks(masks_path, teacher).items()}
    with atomic_npz(out) as add:
        for index in tqdm(range(len(source)), desc="export masks", unit="sample", disable=not progress):
            sample = source.sample(index)
            output = teacher(collate([preprocess(sample, config)[0]]).to(device))
            for key, generator in generators.items():
                task, level = key.split("/")
                add(f"{sample.token}/{task}/{level}", generator(getattr(output, level))[0].cpu().numpy().astype(
                    np.float16))
    return Path(out)
