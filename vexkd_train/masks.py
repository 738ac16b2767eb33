"""Train the mask generators of a frozen teacher (one per task x feature level).

A generator gives each cell's shares s_1..s_T of T masks (the background has the rest, by a
softmax), and decides the cell: the masks d_t are 1 where s_t is the largest share, the
background's included, and 0 elsewhere (`decide`: straight-through, the gradient is the
shares'). The objective, per generator, over the teacher's feature F at its level:

    TaskLoss(teacher_rest(sum_t d_t * F)) / TaskLoss(teacher)   together the masks keep the task working
  + diversity_weight * mean Dice(s_i, s_j), i < j        the T masks want different cells
  + area_weight * mean_t |mean(d_t) / (area_budget / T) - 1|   each takes its part of the budget

where teacher_rest is the frozen rest of the teacher after that level and TaskLoss(teacher)
its unmasked loss on the batch. This is MasKD's objective (Huang et al., ICLR 2023: the
task loss of the sum of the token-masked copies, plus Dice over all pairs), with masks that
are chosen cells and an area for each.
The area is two-sided and per mask because Dice is met by an empty mask (it overlaps
nothing), and a one-sided budget let the segmentation generators empty every mask. Earlier
objectives that failed, and how: docs/lab_notes.md, "Mask generators that failed".

The task loss is divided by the unmasked one so that it weighs the same against the other
terms for both tasks (the demo teacher's map loss is 0.2-0.4, its detection loss 1.5-2.6)
and at any dataset's loss scale. MasKD also weights each token per sample by a softmax; the
weighted sum then collapses onto one token, so it is not used. One masked copy per step
instead of T makes a step about 2x cheaper (the unmasked loss comes free, from the
teacher's own output). The teacher's weights never change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vexkd_core.checkpoint import model_from_checkpoint, read_payload
from vexkd_core.data.dataset import TrainingSet, require_map_ground_truth
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.distill.mask_generator import LEVELS, MaskGenerator, area_error, decide, dice_overlap
from vexkd_core.errors import CheckpointError
from vexkd_core.io import atomic_npz, atomic_write_bytes, atomic_write_json
from vexkd_train.loop import Objective, RunOptions, Schedule, device_of, parameter_checksum, run

# Raised whenever generators of the previous format would load but mean something else (decided
# masks are 4 and 6; 5 was withdrawn: docs/lab_notes.md).
MASKS_FORMAT = 6


@dataclass(frozen=True)
class MaskSettings:
    masks_per_generator: int = 6  # MasKD uses 6-8 tokens
    blocks: int = 3
    random_query: bool = False
    diversity_weight: float = 1.0
    area_budget: float = 0.25  # the share of the map the masks of a generator cover together
    area_weight: float = 5.0
    learning_rate: float = 1e-3
    epochs: int = 4
    max_steps: int = 0  # > 0: stop there (and schedule for it); real nuScenes needs a fraction of an epoch
    # 0: the teacher's training batch. Memory grows with it: at the nuscenes preset on CPU a
    # batch of 1 peaked at 11.4 GB and one of 2 did not fit in 23 GB (bench_full_resolution).
    batch_size: int = 0

    def validate(self) -> None:
        if self.masks_per_generator < 1:
            raise ValueError("--masks-per-generator must be at least 1")
        if self.blocks < 1:
            raise ValueError("--blocks must be at least 1")
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
    return {f"{task}/{level}": MaskGenerator.from_teacher(
        teacher.fuser, channels[level], settings.masks_per_generator, settings.blocks, fusion.heads, fusion.points,
        fusion.ffn_channels, random_query=settings.random_query, seed=seed, query_size=query_size,
        query_dim=config.model.bev_channels).start_at_area(settings.area_budget)
        for task in config.train.task_names for level in LEVELS}


@dataclass
class GeneratorLoss:
    task: torch.Tensor
    diversity: torch.Tensor
    area: torch.Tensor

    @classmethod
    def of(cls, task_loss: torch.Tensor, shares: torch.Tensor, masks: torch.Tensor,
           settings: MaskSettings) -> "GeneratorLoss":
        return cls(task_loss, dice_overlap(shares), area_error(masks, settings.area_budget))

    def terms(self) -> tuple[torch.Tensor, ...]:
        return self.task, self.diversity, self.area

    def total(self, settings: MaskSettings) -> torch.Tensor:
        return self.task + settings.diversity_weight * self.diversity + settings.area_weight * self.area


TERMS = ("task", "dice", "area")


def masked_task_loss(teacher, task: str, level: str, feature: torch.Tensor, masks: torch.Tensor, targets,
                     detection_targets=None) -> torch.Tensor:
    """The teacher's loss for `task` with its feature at `level` replaced by the sum of the
    masked copies, sum_t m_t * F, through the frozen rest of the teacher."""
    masked = feature * masks.sum(1, keepdim=True)
    return teacher.task_loss(task, teacher.task_predictions(task, level, masked), targets, detection_targets)


def teacher_task_loss(teacher, task: str, output, targets, detection_targets=None) -> torch.Tensor:
    """The unmasked teacher's loss for `task`, from its own output: what masking is measured against.
    `detection_targets` may carry the detection head's targets of this batch (shared by the generators)."""
    return teacher.task_loss(task, output.of_task(task), targets, detection_targets)


def masks_loss(teacher, key: str, feature: torch.Tensor, shares: torch.Tensor, targets, settings: MaskSettings,
               unmasked: torch.Tensor, detection_targets=None) -> GeneratorLoss:
    """The objective of generator `key` for the mask `shares` of its level's `feature`: the
    task term through the decided masks, Dice and area on the shares. `unmasked`: the
    teacher's own loss for the task on the batch; the task term is the masked loss as a
    multiple of it (1 = the masks lose nothing), so that it weighs the same against the
    other terms, which are shares of the map, whatever the task and the loss's scale (the
    demo teacher's map loss is 0.2-0.4, its detection loss 1.5-2.6)."""
    task, level = key.split("/")
    masks = decide(shares)
    masked = masked_task_loss(teacher, task, level, feature, masks, targets, detection_targets)
    return GeneratorLoss.of(masked / unmasked.clamp(min=1e-6), shares, masks, settings)


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
        losses[key] = masks_loss(teacher, key, feature, generator.shares(feature), targets, settings, unmasked[task],
                                 detection_targets)
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
        self._terms = {f"{key}/{term}": value for key, loss in losses.items()
                       for term, value in zip(TERMS, loss.terms())}
        return {key: loss.total(self.settings) for key, loss in losses.items()}

    def monitored(self) -> dict[str, torch.Tensor]:
        return self._terms

    def checksum(self) -> float:
        return parameter_checksum(self.modules_by_key)

    def save_progress(self, path: Path, **progress) -> None:
        import io

        payload = {"kind": "mask_generators_progress", "format_version": MASKS_FORMAT,
                   "settings": asdict(self.settings), "teacher_config": self.teacher.config.to_dict(),
                   "generators": self.modules_by_key.state_dict(), **progress}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())

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
    """Train, write masks.pt and log.csv (every term of every generator per step) and, on
    `report_source` (default: the training source), selectivity.json and selectivity.md.
    `resume`: go on from out/last.pt."""
    settings.validate()
    teacher, config, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    require_map_ground_truth(source, config)
    torch.manual_seed(config.train.seed)
    generators = build_generators(teacher, settings, config.train.seed)
    options = RunOptions(out, device, resume, progress=progress)
    objective = MaskObjective(teacher, generators, settings).to(device_of(options))
    schedule = Schedule(settings.learning_rate, settings.epochs, settings.batch_size or config.train.batch_size,
                        config.train.seed, max_steps=settings.max_steps, decay_to_stop=True,
                        checkpoint_every=config.train.checkpoint_every)
    run(objective, TrainingSet(source, config, augment=config.train.augment), schedule, options)
    path = save_masks(out / "masks.pt", generators, settings, config.to_dict(), teacher_checkpoint)
    write_selectivity(objective.teacher, generators, report_source or source, out, device, progress)
    return path


def teacher_outputs(teacher, source: NuScenesSource, device: str, what: str, progress: bool):
    """(sample, targets, the teacher's output) for every sample of `source`, unaugmented."""
    from vexkd_core.data.preprocess import collate, preprocess

    for index in tqdm(range(len(source)), desc=what, unit="sample", disable=not progress):
        sample = source.sample(index)
        inputs, targets = preprocess(sample, teacher.config)
        yield sample, targets, teacher(collate([inputs]).to(device))


@torch.no_grad()
def measure_agreement(teacher, first: dict[str, MaskGenerator], second: dict[str, MaskGenerator],
                      source: NuScenesSource, device: str = "cpu", progress: bool = True) -> dict[str, dict]:
    """How alike two sets of generators' masks are on `source` (AgreementMeter), per generator."""
    from vexkd_core.distill.selectivity import AgreementMeter

    meters = {key: AgreementMeter() for key in first}
    for _, _, output in teacher_outputs(teacher, source, device, "mask agreement", progress):
        for key, meter in meters.items():
            feature = getattr(output, key.split("/")[1])
            meter.add(first[key].eval()(feature)[0], second[key].eval()(feature)[0])
    return {key: meter.summary() for key, meter in meters.items()}


@torch.no_grad()
def measure_selectivity(teacher, generators: dict[str, MaskGenerator], source: NuScenesSource, device: str = "cpu",
                        progress: bool = True) -> dict[str, list[dict]]:
    """Selectivity of every generator's masks over the samples of `source`, unaugmented."""
    from vexkd_core.data.preprocess import Augmentation, map_targets
    from vexkd_core.distill.selectivity import SelectivityMeter, as_report, box_footprints

    config = teacher.config
    grid = config.grid.bev
    meters = {key: SelectivityMeter(key.split("/")[0]) for key in generators}
    for sample, targets, output in teacher_outputs(teacher, source, device, "mask selectivity", progress):
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

    teacher, _, _ = model_from_checkpoint(teacher_checkpoint, expected_modality="fusion")
    teacher.to(device)
    generators = {key: generator.to(device).eval() for key, generator in load_masks(masks_path, teacher).items()}
    with atomic_npz(out) as add:
        for sample, _, output in teacher_outputs(teacher, source, device, "export masks", progress):
            for key, generator in generators.items():
                task, level = key.split("/")
                add(f"{sample.token}/{task}/{level}", generator(getattr(output, level))[0].cpu().numpy().astype(
                    np.float16))
    return Path(out)
