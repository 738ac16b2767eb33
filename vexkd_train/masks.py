"""Train the mask generators of a frozen teacher (one per task x feature level).

Soft masks (the default, MasKD's recipe; vexkd_core/distill/mask_generator.py): per generator,
over the teacher's feature F at its level,

    TaskLoss(teacher_rest(sum_t p_t * m_t * F)) / TaskLoss(teacher)   the weighted masks keep the task working
  + diversity_weight * mean Dice(m_i / max m_i, m_j / max m_j), i < j   the T masks want different cells

where teacher_rest is the frozen rest of the teacher after that level, p_t the per-sample token
weights and TaskLoss(teacher) the unmasked loss on the batch. MasKD's optimiser (Adam, lr 0.01,
L2 decay 1e-3, cosine to 1e-6, 2,000 iterations) is the `nuscenes` recipe; the `tiny` one keeps
it for 8 epochs (MaskSettings.recipe).

Decided masks (ours, `--mask-kind decided`): cells given wholly to one mask or none, the task
term through sum_t d_t * F, Dice on the shares, and each mask held both ways to its part of an
area budget, because Dice is met by an empty mask (it overlaps nothing). Earlier objectives
that failed, and how: docs/lab_notes.md, "Mask generators that failed".

Ours in both: the task loss is divided by the unmasked one so that it weighs the same against
Dice for both tasks (the demo teacher's map loss is 0.2-0.4, its detection loss 1.5-2.6) and at
any dataset's loss scale; the teacher runs once per step and its weights never change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vexkd_core.checkpoint import model_from_checkpoint, read_payload, write_payload
from vexkd_core.data.dataset import TrainingSet, require_map_ground_truth
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.distill.mask_generator import (GENERATORS, LEVELS, QUERIES, MaskGenerator, area_error, decide,
                                               dice_overlap, max_normalised)
from vexkd_core.errors import CheckpointError
from vexkd_core.io import atomic_npz, atomic_write_json
from vexkd_core.models.fusion import MGFM
from vexkd_train.loop import Objective, RunOptions, Schedule, device_of, parameter_checksum, run
from vexkd_train.mask_reports import query_movement, teacher_outputs, write_selectivity

# Raised whenever generators of the previous format would load but mean something else (8:
# the query named in the settings, the fused map one of them; 7: soft masks and the mask kind
# in the settings; 4 and 6: decided masks; 5 was withdrawn).
MASKS_FORMAT = 8
KINDS = tuple(GENERATORS)


@dataclass(frozen=True)
class MaskSettings:
    kind: str = "soft"
    masks_per_generator: int = 6  # MasKD uses 6-8 tokens
    blocks: int = 3
    query: str = "teacher"  # mask_generator.QUERIES: the teacher's (the paper's), random, or the fused map
    diversity_weight: float = 1.0
    area_budget: float = 0.25  # decided masks: the share of the map the masks of a generator cover together
    area_weight: float = 5.0  # decided masks
    optimizer: str = "adam"
    learning_rate: float = 0.01
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.0  # of the steps, linear (MasKD has none)
    final_fraction: float = 1e-4  # the cosine ends at this fraction of the learning rate
    epochs: int = 4
    max_steps: int = 0  # > 0: stop there (and schedule for it); real nuScenes needs a fraction of an epoch
    # 0: the teacher's training batch. Memory grows with it: at the nuscenes preset on CPU a
    # batch of 1 peaked at 11.4 GB and one of 2 did not fit in 23 GB (bench_full_resolution).
    batch_size: int = 0

    @classmethod
    def recipe(cls, kind: str = "soft", preset: str = "tiny", **choices) -> "MaskSettings":
        """The settings `vexkd-train masks` starts from for a teacher of `preset`; `choices`
        (flags given) override them."""
        if kind not in KINDS:
            raise ValueError(f"--mask-kind must be one of {', '.join(KINDS)}, not '{kind}'")
        if kind == "decided":  # found on the demo world: at 5e-3 decided masks swung from no cell to every cell
            base = dict(optimizer="adamw", learning_rate=1e-3, weight_decay=1e-2, warmup_fraction=0.05,
                        final_fraction=0.05, epochs=4)
        elif preset == "nuscenes":  # MasKD: 2,000 iterations, a fraction of a nuScenes epoch
            base = dict(epochs=1, max_steps=2000)
        else:  # the demo world's 48 samples: on its teacher Dice falls until ~150 of these 192 steps
            base = dict(epochs=8)
        return replace(cls(kind=kind, **base), **choices)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"--mask-kind must be one of {', '.join(KINDS)}, not '{self.kind}'")
        if self.masks_per_generator < 1:
            raise ValueError("--masks-per-generator must be at least 1")
        if self.blocks < 1:
            raise ValueError("--blocks must be at least 1")
        if self.query not in QUERIES:
            raise ValueError(f"--query must be one of {', '.join(QUERIES)}, not '{self.query}'")
        if not 0.0 < self.area_budget <= 1.0:
            raise ValueError(f"--area-budget must be in (0, 1], not {self.area_budget}")
        if self.epochs < 1:
            raise ValueError("--max-epochs must be at least 1")
        if self.batch_size < 0:
            raise ValueError("--batch-size must be 0 (the teacher's) or more")
        if self.max_steps < 0:
            raise ValueError("--max-steps must be 0 (all of the epochs) or more")


def build_generators(teacher, settings: MaskSettings, seed: int = 0) -> dict[str, MaskGenerator]:
    config = teacher.config
    fusion = config.model.fusion
    channels = teacher.feature_channels
    grid = config.grid.bev
    # A fuser without a query (ConvFuser) gets a random one on the grid an MGFM of this
    # config would have, so the ConvFuser / MGFM comparison is like for like.
    query_size = (grid.height // fusion.downsample, grid.width // fusion.downsample)
    generators = {f"{task}/{level}": GENERATORS[settings.kind].from_teacher(
        teacher.fuser, channels[level], settings.masks_per_generator, settings.blocks, fusion.heads, fusion.points,
        fusion.ffn_channels, query=settings.query, seed=seed, query_size=query_size,
        query_dim=config.model.bev_channels) for task in config.train.task_names for level in LEVELS}
    if settings.kind == "decided":
        for generator in generators.values():
            generator.start_at_area(settings.area_budget)
    return generators


@dataclass
class GeneratorLoss:
    terms: dict[str, torch.Tensor]  # task, dice and, for decided masks, area

    def total(self, settings: MaskSettings) -> torch.Tensor:
        total = self.terms["task"] + settings.diversity_weight * self.terms["dice"]
        if "area" in self.terms:
            total = total + settings.area_weight * self.terms["area"]
        return total


def masked_task_loss(teacher, task: str, level: str, feature: torch.Tensor, weight: torch.Tensor, targets,
                     detection_targets=None) -> torch.Tensor:
    """The teacher's loss for `task` with its feature at `level` replaced by the weighted sum of
    the masked copies, `weight` (B, 1, H, W) = sum_t p_t m_t, through the frozen rest of the teacher."""
    return teacher.task_loss(task, teacher.task_predictions(task, level, feature * weight), targets, detection_targets)


def teacher_task_loss(teacher, task: str, output, targets, detection_targets=None) -> torch.Tensor:
    """The unmasked teacher's loss for `task`, from its own output: what masking is measured against.
    `detection_targets` may carry the detection head's targets of this batch (shared by the generators)."""
    return teacher.task_loss(task, output.of_task(task), targets, detection_targets)


def soft_masks_loss(teacher, key: str, feature: torch.Tensor, masks: torch.Tensor, token_weights: torch.Tensor,
                    targets, unmasked: torch.Tensor, detection_targets=None) -> GeneratorLoss:
    """Generator `key`'s soft `masks` (B, T, H, W) with `token_weights` (B, T) on its level's
    `feature`: the task term as a multiple of the teacher's unmasked loss `unmasked` (1 = the
    masks lose nothing), and Dice over the max-normalised masks."""
    task, level = key.split("/")
    weight = (masks * token_weights[:, :, None, None]).sum(1, keepdim=True)
    masked = masked_task_loss(teacher, task, level, feature, weight, targets, detection_targets)
    return GeneratorLoss({"task": masked / unmasked.clamp(min=1e-6), "dice": dice_overlap(max_normalised(masks))})


def decided_masks_loss(teacher, key: str, feature: torch.Tensor, shares: torch.Tensor, targets,
                       settings: MaskSettings, unmasked: torch.Tensor, detection_targets=None) -> GeneratorLoss:
    """Generator `key`'s decided masks for the `shares` of its level's `feature`: the task term
    through the decided masks (as soft_masks_loss's), Dice and area on the shares."""
    task, level = key.split("/")
    masks = decide(shares)
    masked = masked_task_loss(teacher, task, level, feature, masks.sum(1, keepdim=True), targets, detection_targets)
    return GeneratorLoss({"task": masked / unmasked.clamp(min=1e-6), "dice": dice_overlap(shares),
                          "area": area_error(masks, settings.area_budget)})


def step_losses(teacher, generators: dict[str, MaskGenerator], batch, targets,
                settings: MaskSettings) -> dict[str, GeneratorLoss]:
    """Every generator's loss on one batch: the teacher runs once, unmasked, for the features,
    the detection targets and the losses that the masked ones are measured against."""
    with torch.no_grad():
        output = teacher(batch)
        detection_targets = teacher.box_targets(targets, output.low.device)
        unmasked = {task: teacher_task_loss(teacher, task, output, targets, detection_targets)
                    for task in teacher.config.train.task_names}
    losses = {}
    for key, generator in generators.items():
        task, level = key.split("/")
        feature = getattr(output, level)
        if settings.kind == "soft":
            losses[key] = soft_masks_loss(teacher, key, feature, generator(feature, output.fused),
                                          generator.token_weights(feature), targets, unmasked[task], detection_targets)
        else:
            losses[key] = decided_masks_loss(teacher, key, feature, generator.shares(feature, output.fused), targets,
                                             settings, unmasked[task], detection_targets)
    return losses


class MaskObjective(Objective):
    """The generators' objective over the frozen teacher (`step_losses`): each generator's
    total is a loss term; its task, Dice and area terms are logged beside it. last.pt holds
    the generators and the settings they were started with."""

    description = "train mask generators"

    def __init__(self, teacher, generators: dict[str, MaskGenerator], settings: MaskSettings):
        super().__init__()
        self.teacher, self.settings = freeze(teacher), settings
        self.generators = generators
        self.modules_by_key = torch.nn.ModuleDict({k.replace("/", "__"): g for k, g in generators.items()})
        self._terms: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "MaskObjective":
        # The teacher's BatchNorm statistics stay frozen.
        self.training = mode
        self.modules_by_key.train(mode)
        return self

    def forward(self, batch, targets) -> dict[str, torch.Tensor]:
        losses = step_losses(self.teacher, self.generators, batch, targets, self.settings)
        self._terms = {f"{key}/{term}": value for key, loss in losses.items() for term, value in loss.terms.items()}
        return {key: loss.total(self.settings) for key, loss in losses.items()}

    def monitored(self) -> dict[str, torch.Tensor]:
        return self._terms

    def checksum(self) -> float:
        return parameter_checksum(self.modules_by_key)

    def save_progress(self, path: Path, **progress) -> None:
        write_payload(path, {"kind": "mask_generators_progress", "format_version": MASKS_FORMAT,
                             "settings": asdict(self.settings), "teacher_config": self.teacher.config.to_dict(),
                             "generators": self.modules_by_key.state_dict(), **progress})

    def restore_progress(self, path: Path) -> dict:
        payload = read_payload(path, "mask-generator progress")
        if payload.get("kind") != "mask_generators_progress" or payload.get("format_version") != MASKS_FORMAT \
                or payload.get("settings") != asdict(self.settings) \
                or payload.get("teacher_config") != self.teacher.config.to_dict():
            raise CheckpointError(f"{path} is not the progress of generators with these settings and this teacher; "
                                  "use a new --out or the same settings")
        self.modules_by_key.load_state_dict(payload["generators"])
        return payload


def train_masks(teacher_checkpoint: Path, source: NuScenesSource, out: Path, settings: MaskSettings,
                device: str = "cpu", progress: bool = True, report_source: NuScenesSource | None = None,
                resume: bool = False) -> Path:
    """Train, write masks.pt, log.csv (every term of every generator per step),
    query_movement.json (mask_reports.query_movement) and, on `report_source` (default: the
    training source), selectivity.json and selectivity.md. `resume`: go on from out/last.pt
    (the query's movement is still measured from the generators' start, rebuilt from the seed)."""
    settings.validate()
    teacher, config, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    require_map_ground_truth(source, config)
    torch.manual_seed(config.train.seed)
    generators = build_generators(teacher, settings, config.train.seed)
    options = RunOptions(out, device, resume, progress=progress)
    objective = MaskObjective(teacher, generators, settings).to(device_of(options))
    schedule = Schedule(settings.learning_rate, settings.epochs, settings.batch_size or config.train.batch_size,
                        config.train.seed, weight_decay=settings.weight_decay, max_steps=settings.max_steps,
                        decay_to_stop=True, checkpoint_every=config.train.checkpoint_every,
                        optimizer=settings.optimizer, warmup_fraction=settings.warmup_fraction,
                        final_fraction=settings.final_fraction)
    started = {key: generator.query.detach().clone() for key, generator in generators.items()
               if generator.query is not None}
    run(objective, TrainingSet(source, config, augment=config.train.augment), schedule, options)
    path = save_masks(out / "masks.pt", generators, settings, config.to_dict(), teacher_checkpoint)
    teacher_query = teacher.fuser.bev_query.detach() if isinstance(teacher.fuser, MGFM) else None
    atomic_write_json(out / "query_movement.json", query_movement(started, generators, teacher_query))
    write_selectivity(objective.teacher, generators, report_source or source, out, device, progress)
    return path


def save_masks(path: Path, generators: dict[str, MaskGenerator], settings: MaskSettings, teacher_config: dict,
               teacher_checkpoint: Path) -> Path:
    return write_payload(path, {
        "format_version": MASKS_FORMAT, "kind": "mask_generators", "settings": asdict(settings),
        "teacher_config": teacher_config, "teacher_checkpoint": str(teacher_checkpoint),
        "generators": {key: generator.state_dict() for key, generator in generators.items()}})


def load_masks(path: Path, teacher, query: str | None = None) -> dict[str, MaskGenerator]:
    """Generators for `teacher`, which must be the teacher they were trained with; with
    `query` given (of QUERIES), they must also start from that query."""
    payload = read_payload(path, "mask generators")
    if payload.get("kind") != "mask_generators":
        raise CheckpointError(f"{path} holds no vexkd mask generators")
    if payload.get("format_version") != MASKS_FORMAT:
        raise CheckpointError(f"{path} has mask-generator format {payload.get('format_version')}, this vexkd reads "
                              f"{MASKS_FORMAT}: train them again with vexkd-train masks")
    if payload["teacher_config"] != teacher.config.to_dict():
        raise CheckpointError(f"{path} was trained for a teacher with another config")
    settings = MaskSettings(**payload["settings"])
    if query is not None and settings.query != query:
        raise CheckpointError(f"{path} holds generators of the {settings.query} query, not of the {query} query")
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

    teacher, _, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    teacher.to(device)
    generators = {key: generator.to(device).eval() for key, generator in load_masks(masks_path, teacher).items()}
    with atomic_npz(out) as add:
        for sample, _, output in teacher_outputs(teacher, source, device, "export masks", progress):
            for key, generator in generators.items():
                task, level = key.split("/")
                add(f"{sample.token}/{task}/{level}", generator(getattr(output, level), output.fused)[0].cpu().numpy()
                    .astype(np.float16))
    return Path(out)
