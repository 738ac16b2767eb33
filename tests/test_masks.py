"""Mask generation that masks. Soft masks (the default): no constant mask is representable,
they start near 0.5, and training a few steps makes them neither constant nor a partition,
with their Dice falling. Decided masks (`--mask-kind decided`): cells, an objective that
cannot be met by the whole map or by no mask, trained generators that pick cells and differ.
The selectivity report measures what it says, and the ConvFuser teacher of the paper's
comparison trains, evaluates and gets random-query masks."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vexkd_core.checkpoint import model_from_checkpoint, save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, collate_training, map_source_grid
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.distill.mask_generator import area_error, decide, dice_overlap
from vexkd_core.distill.selectivity import (AgreementMeter, SelectivityMeter, agreement_table, as_report,
                                            box_footprints, generator_diversity, selectivity_table)
from vexkd_core.errors import CheckpointError
from vexkd_core.models.vexkd import build_model
from vexkd_core.structures import BEVGrid, Boxes3D
from vexkd_train.masks import (MaskSettings, build_generators, decided_masks_loss, load_masks, teacher_task_loss,
                               train_masks)
from vexkd_train.trainer import RunOptions, train

pytestmark = pytest.mark.slow

CONFIG = load_config("tiny", ["model.lidar.sweeps=1", "train.batch_size=1"])
BIN = Path(sys.executable).parent


def test_dice_counts_every_pair_and_the_area_every_mask():
    left = torch.zeros(1, 1, 4, 4)
    left[..., :2] = 1
    # Pairs (left, left), (left, 0.5 left), (left, 0.5 left): Dice 1, 0.8, 0.8 (2 * 4 / (8 + 2)).
    assert dice_overlap(torch.cat([left, left, left * 0.5], 1)).item() == pytest.approx((1 + 0.8 + 0.8) / 3)
    assert dice_overlap(torch.cat([left, 1 - left], 1)).item() == pytest.approx(0.0, abs=1e-6)
    # Each of T masks is held to area / T of the map, both ways: two halves are 4x their part
    # of a 0.25 budget, an empty mask misses all of its part.
    assert area_error(torch.cat([left, 1 - left], 1), 0.25).item() == pytest.approx(3.0)
    quarter = torch.zeros(1, 1, 4, 4)
    quarter[..., 0, :2] = 1  # 2 of 16 cells: 0.125, half of 0.25
    assert area_error(torch.cat([quarter, quarter.flip(-1)], 1), 0.25).item() == pytest.approx(0.0)
    assert area_error(torch.cat([quarter, torch.zeros(1, 1, 4, 4)], 1), 0.25).item() == pytest.approx(0.5)


def test_decided_masks_give_each_cell_wholly_to_its_largest_share_with_the_shares_gradient():
    shares = torch.tensor([[0.6, 0.1, 0.2], [0.3, 0.5, 0.35]]).reshape(1, 2, 3, 1).requires_grad_()
    # Cells: (0.6, 0.3) -> mask 0; (0.1, 0.5) -> mask 1; (0.2, 0.35) -> the background (0.45).
    masks = decide(shares)
    assert masks.detach().reshape(2, 3).tolist() == [[1, 0, 0], [0, 1, 0]]
    # Straight-through: the gradient reaches the shares as if the masks were the shares.
    (masks * torch.arange(6.0).reshape(1, 2, 3, 1)).sum().backward()
    assert shares.grad.flatten().tolist() == list(range(6))


def test_generated_masks_are_decided_cells_with_shares_at_the_budget():
    """Each cell is one mask's or none: masks of 0 and 1 that never overlap; before training
    the shares (what the masks are decided from) cover about the area budget together, so the
    background takes every cell and training grows the masks from none."""
    torch.manual_seed(0)
    teacher = build_model(CONFIG, "fusion").eval()
    generator = build_generators(teacher, MaskSettings.recipe("decided", masks_per_generator=4, blocks=1))[
        "detection/high"]
    feature = torch.randn(2, teacher.feature_channels["high"], 12, 10)
    masks = generator(feature)
    assert masks.shape == (2, 4, 12, 10) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum(1).max() <= 1
    shares = generator.shares(feature)
    assert shares.sum(1).mean().item() == pytest.approx(MaskSettings().area_budget, abs=0.1)  # 0.23-0.36 by seed
    assert torch.equal(masks, decide(shares)) and masks.sum() == 0


def test_soft_masks_start_near_a_half_overlap_and_cannot_be_made_constant():
    """MasKD's masks: sigmoid of a logit with no bias, on states normalised without a shift,
    so the head cannot add a constant; token weights are a softmax per sample."""
    torch.manual_seed(0)
    teacher = build_model(CONFIG, "fusion").eval()
    generator = build_generators(teacher, MaskSettings(masks_per_generator=4, blocks=1))["segmentation/low"]
    feature = torch.randn(2, teacher.feature_channels["low"], 12, 10)
    with torch.no_grad():
        masks = generator(feature)
        assert masks.shape == (2, 4, 12, 10) and (masks - 0.5).abs().max() < 0.1  # MasKD's start
        assert not torch.allclose(masks.sum(1), torch.ones(2, 12, 10))  # not a partition of the cells
        weights = generator.token_weights(feature)
        assert weights.shape == (2, 4) and torch.allclose(weights.sum(1), torch.ones(2))
        assert generator.head.bias is None and generator.norm.bias is None
        # The one direction that would add the same to every cell's logit gives exactly 0.5:
        # a normalised state has zero mean over its channels.
        generator.norm.weight.fill_(1.0)
        generator.head.weight.fill_(3.0)
        assert torch.allclose(generator(feature), torch.full_like(masks, 0.5), atol=1e-5)


def test_box_footprints_cover_a_rotated_box():
    grid = BEVGrid(x_min=-10, y_min=-10, resolution=0.5, width=40, height=40)
    box = Boxes3D(center=np.array([[2.0, -3.0, 0.0]]), size_lwh=np.array([[4.0, 1.0, 1.5]]), yaw=np.array([np.pi / 2]),
                  velocity=np.zeros((1, 2)), label=np.zeros(1, int), score=np.ones(1))
    covered = box_footprints(box, grid)
    xs, ys = grid.cell_centers()
    # Turned by 90 degrees the 4 m length runs along y.
    assert covered[(np.abs(xs - 2.0) < 0.3) & (np.abs(ys + 3.0) < 1.9)].all()
    assert not covered[(np.abs(xs - 2.0) > 1.0) | (np.abs(ys + 3.0) > 2.5)].any()


def test_selectivity_tells_a_uniform_mask_from_a_selective_one():
    region = np.zeros((8, 8), bool)
    region[2:4, 2:4] = True
    selective = torch.from_numpy(np.where(region, 0.9, 0.05).astype(np.float32))
    meter = SelectivityMeter("detection")
    meter.add(torch.stack([torch.full((8, 8), 0.8), selective]), region)
    uniform, picked = meter.summary()
    assert (uniform.above_half, uniform.variation, uniform.object_ratio) == (1.0, pytest.approx(0.0, abs=1e-6),
                                                                            pytest.approx(1.0))
    assert picked.above_half == pytest.approx(4 / 64) and picked.object_ratio == pytest.approx(18.0)
    segmentation = SelectivityMeter("segmentation")
    segmentation.add(selective[None], region)
    assert segmentation.summary()[0].map_share == pytest.approx(3.6 / (3.6 + 60 * 0.05))
    # A decided mask that lies only on the region: its ratio of means is "> 1000", not 1e9.
    only_there = SelectivityMeter("detection")
    only_there.add(torch.from_numpy(region.astype(np.float32))[None], region)
    assert "| detection/low | 0 | 6.2% | 0.062 | 3.87 | > 1000 | - |" in selectivity_table(
        as_report({"detection/low": only_there}))


def test_diversity_counts_copies_and_uniform_masks_once_at_most():
    region = np.zeros((10, 10), bool)
    region[:5, :4] = True
    first = np.where(region, 0.9, 0.05).astype(np.float32)
    second = np.roll(first, 5, axis=0)  # the same area elsewhere
    meter = SelectivityMeter("detection")
    masks = [first, first * 0.95, second, np.full((10, 10), 0.25), np.full((10, 10), 0.02)]
    meter.add(torch.from_numpy(np.stack(masks).astype(np.float32)), region)
    rows = as_report({"detection/low": meter})["detection/low"]
    assert rows[0]["region_dice"] == pytest.approx([1, 1, 0, 0, 0])
    assert rows[3]["region_dice"][4] == 1.0  # both empty above 0.5: the same (no) region
    diversity = generator_diversity(rows)
    # The copy and the two uniform masks are not distinct; soft Dice alone calls the uniform ones different.
    assert diversity.distinct == 2 and rows[3]["soft_dice"][4] < 0.5
    assert diversity.region_dice == pytest.approx(2 / 10)  # pairs (0, 1) and (3, 4) of 10


def test_agreement_tells_the_same_masks_in_another_order_from_other_masks():
    cells = torch.zeros(3, 8, 8)
    cells[0, :2], cells[1, 2:4], cells[2, 4:6] = 1, 1, 1  # three disjoint masks, rows 6-7 background
    same = AgreementMeter()
    same.add(cells, cells.flip(0))  # the same masks, listed in another order
    assert same.summary() == {"union_dice": 1.0, "best_dice": 1.0}
    other = AgreementMeter()
    elsewhere = torch.zeros(3, 8, 8)
    elsewhere[:, 6:] = cells[:, :2]  # the first mask's rows moved into the background, the others gone
    other.add(cells, elsewhere)
    assert other.summary() == {"union_dice": 0.0, "best_dice": 0.0}
    half = AgreementMeter()
    half.add(cells, torch.cat([cells[:2], torch.zeros(1, 8, 8)]))  # two of three kept
    assert half.summary()["union_dice"] == pytest.approx(2 * 32 / (48 + 32))
    assert half.summary()["best_dice"] == pytest.approx(2 / 3)
    assert "| detection/low | 0.80 | 0.67 |" in agreement_table({"detection/low": half.summary()})


@pytest.fixture(scope="module")
def trained_teacher(tiny_world, tmp_path_factory):
    """A teacher trained a few dozen steps on the tiny world: enough for its task loss to
    care where the feature is kept."""
    dataroot, world = tiny_world
    folder = tmp_path_factory.mktemp("masks")
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(CONFIG, True))
    torch.manual_seed(0)
    teacher = train(build_model(CONFIG, "fusion"), CONFIG, source, "fusion",
                    RunOptions(folder / "teacher", max_steps=40, max_epochs=10, progress=False))
    return teacher, source, folder


@pytest.fixture(scope="module")
def trained_masks(trained_teacher):
    checkpoint, source, folder = trained_teacher
    settings = MaskSettings.recipe("decided", masks_per_generator=4, blocks=1, epochs=20)
    return train_masks(checkpoint, source, folder / "generators", settings, progress=False), settings


def test_trained_masks_pick_cells_and_differ_from_each_other_and_from_the_whole_map(trained_teacher, trained_masks):
    """On this 4-sample world a few dozen steps of mask training must already give, in every
    generator, masks that take some cells and leave most, none covering the map, and that
    differ from each other (not copies, not all empty). Where they lie is up to the teacher:
    this 40-step one loses next to nothing when its feature is masked; the demo's selectivity
    report, with its object and map ratios, is in docs/results.md."""
    checkpoint, source, folder = trained_teacher
    report = json.loads((folder / "generators" / "selectivity.json").read_text())
    teacher, _, _ = model_from_checkpoint(checkpoint)
    generators = load_masks(trained_masks[0], teacher)
    batch, _ = collate_training([TrainingSet(source, CONFIG, augment=False)[0]])
    with torch.no_grad():
        output = teacher.eval()(batch)
        for key, generator in generators.items():
            union = generator.eval()(getattr(output, key.split("/")[1]))[0].sum(0)
            assert 0.02 < union.mean().item() < 0.6, (key, union.mean())  # the budget is 0.25
    for key, masks in report.items():
        covered = [stats["above_half"] for stats in masks]
        assert min(covered) > 0.01 and max(covered) < 0.5, (key, covered)  # each mask's part: 0.25 / 4
        assert generator_diversity(masks).distinct == len(masks), (key, masks)


def test_training_lowers_the_objective_below_untrained_masks_the_whole_map_and_no_mask(trained_teacher,
                                                                                       trained_masks):
    """Mask training improves on where it started, and on the two ways of not choosing: every
    cell kept (the first version's optimum: T stripes covering the map) and none kept."""
    checkpoint, source, _ = trained_teacher
    settings = trained_masks[1]
    teacher, _, _ = model_from_checkpoint(checkpoint)
    teacher = freeze(teacher)
    generators = load_masks(trained_masks[0], teacher)
    untrained = build_generators(teacher, settings, teacher.config.train.seed)
    batch, targets = collate_training([TrainingSet(source, CONFIG, augment=False)[0]])

    def objective(key, feature, shares, output):
        unmasked = teacher_task_loss(teacher, key.split("/")[0], output, targets)
        return decided_masks_loss(teacher, key, feature, shares, targets, settings, unmasked).total(settings).item()

    with torch.no_grad():
        output = teacher(batch)
        for key, generator in generators.items():
            feature = getattr(output, key.split("/")[1])
            trained = objective(key, feature, generator.eval().shares(feature), output)
            start = objective(key, feature, untrained[key].eval().shares(feature), output)
            count = settings.masks_per_generator
            stripes = torch.stack([torch.zeros(feature.shape[-2:]).index_fill_(1, torch.arange(t, feature.shape[-1],
                                                                                            count), 0.9)
                                   for t in range(count)])[None]
            whole_map = objective(key, feature, stripes, output)
            no_mask = objective(key, feature, torch.zeros_like(stripes), output)
            assert trained < min(start, whole_map, no_mask), (key, trained, start, whole_map, no_mask)


def test_soft_masks_trained_a_few_steps_vary_overlap_and_grow_apart(trained_teacher):
    checkpoint, source, folder = trained_teacher
    settings = MaskSettings(masks_per_generator=4, blocks=1, epochs=10)  # 4 samples: 40 steps
    path = train_masks(checkpoint, source, folder / "soft", settings, progress=False)
    rows = list(csv.DictReader((folder / "soft" / "log.csv").open()))
    assert len(rows) == 40
    for key in ("detection/low", "detection/high", "segmentation/low", "segmentation/high"):
        dice = [float(row[f"{key}/dice"]) for row in rows]
        assert np.mean(dice[-5:]) < np.mean(dice[:5]), (key, dice[:5], dice[-5:])
    teacher, _, _ = model_from_checkpoint(checkpoint)
    generators = load_masks(path, teacher)
    assert {generator.kind for generator in generators.values()} == {"soft"}
    # How far training moved the copied query, from where it started and from the teacher's.
    movement = json.loads((folder / "soft" / "query_movement.json").read_text())
    assert set(movement) == set(generators)
    for key, moved in movement.items():
        query = generators[key].query.detach()
        start = teacher.fuser.bev_query.detach()
        assert moved["relative_change"] == pytest.approx(float((query - start).norm() / start.norm()), rel=1e-4), key
        assert -1 <= moved["cosine_to_teacher_query"] < 1, key
    batch, _ = collate_training([TrainingSet(source, CONFIG, augment=False)[0]])
    with torch.no_grad():
        output = teacher.eval()(batch)
        for key, generator in generators.items():
            masks = generator.eval()(getattr(output, key.split("/")[1]))[0]
            assert masks.flatten(1).std(1).min() > 1e-3, key  # no mask is constant
            overlap = (masks[:, None] * masks[None]).flatten(2).mean(2)  # (T, T): soft masks may share cells
            assert overlap[~torch.eye(len(masks), dtype=bool)].min() > 0, key


def test_convfuser_teacher_trains_evaluates_and_takes_random_query_masks(tiny_world, tmp_path):
    dataroot = str(tiny_world[0])
    common = ["--dataroot", dataroot, "--set", "model.lidar.sweeps=1", "--set", "train.batch_size=1"]
    trained = subprocess.run([BIN / "vexkd-train", "teacher", "--fuser", "convfuser", *common, "--out",
                              tmp_path / "teacher", "--max-steps", "2"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = tmp_path / "teacher" / "model.pt"
    teacher, config, _ = model_from_checkpoint(checkpoint)
    assert config.model.fuser == "convfuser" and not hasattr(teacher.fuser, "bev_query")
    for drop in (None, "lidar", "camera"):
        out = tmp_path / f"eval-{drop}"
        evaluated = subprocess.run([BIN / "vexkd-train", "eval", "--checkpoint", checkpoint, "--dataroot", dataroot,
                                    "--out", out] + (["--drop-sensor", drop] if drop else []),
                                   capture_output=True, text=True)
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["drop_sensor"] == drop and 0.0 <= metrics["map"]["mIoU"] <= 1.0
    masks = [BIN / "vexkd-train", "masks", "--teacher", checkpoint, "--dataroot", dataroot, "--out", tmp_path / "m",
             "--max-epochs", "1", "--blocks", "1", "--masks-per-generator", "2"]
    refused = subprocess.run(masks, capture_output=True, text=True)
    assert refused.returncode == 2 and "--query random" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    random = subprocess.run(masks + ["--query", "random"], capture_output=True, text=True)
    assert random.returncode == 0, random.stderr[-2000:]


@pytest.mark.parametrize("arguments, message", [
    (["--area-budget", "0"], "--area-budget must be in (0, 1]"),
    (["--area-budget", "2"], "--area-budget must be in (0, 1]"),
    (["--masks-per-generator", "0"], "--masks-per-generator must be at least 1"),
    (["--max-epochs", "0"], "--max-epochs must be at least 1"),
])
def test_bad_mask_settings_give_one_line(tiny_world, tmp_path, arguments, message):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", build_model(CONFIG, "fusion"), CONFIG, "fusion")
    result = subprocess.run([BIN / "vexkd-train", "masks", "--teacher", checkpoint, "--dataroot", str(tiny_world[0]),
                             "--out", tmp_path / "m", *arguments], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1


def test_masks_of_a_teacher_saved_before_the_fuser_option_load(tiny_world, tmp_path):
    """A checkpoint's stored config may lack fields added later (model.fuser): its masks are
    stored with the normalised config and load for the same teacher."""
    dataroot, world = tiny_world
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "teacher.pt", build_model(CONFIG, "fusion"), CONFIG, "fusion")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["model"]["fuser"]
    torch.save(payload, path)
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(CONFIG, True))
    masks = train_masks(path, source, tmp_path / "m", MaskSettings(masks_per_generator=2, blocks=1, epochs=1),
                        progress=False)
    teacher, _, _ = model_from_checkpoint(path)
    assert set(load_masks(masks, teacher)) == {"detection/low", "detection/high", "segmentation/low",
                                               "segmentation/high"}
    with pytest.raises(CheckpointError, match="generators of the teacher query, not of the random query"):
        load_masks(masks, teacher, query="random")


def test_wrong_inputs_to_eval_and_teacher_are_one_line(tiny_world, tmp_path):
    dataroot = str(tiny_world[0])
    torch.manual_seed(0)
    lidar = save_checkpoint(tmp_path / "lidar.pt", build_model(CONFIG, "lidar"), CONFIG, "lidar")
    dropped = subprocess.run([BIN / "vexkd-train", "eval", "--checkpoint", lidar, "--dataroot", dataroot, "--out",
                              tmp_path / "e", "--drop-sensor", "camera"], capture_output=True, text=True)
    assert dropped.returncode == 2 and "--drop-sensor is for a fusion model" in dropped.stderr
    assert len(dropped.stderr.strip().splitlines()) == 1
    misfit = subprocess.run([BIN / "vexkd-train", "teacher", "--dataroot", dataroot, "--set", "model.lidar.sweeps=1",
                             "--set", "model.head_channels=16", "--init-from", lidar, "--out", tmp_path / "t",
                             "--max-steps", "1"], capture_output=True, text=True)
    assert misfit.returncode == 2 and "do not fit the teacher's config" in misfit.stderr, misfit.stderr[-2000:]
    assert len(misfit.stderr.strip().splitlines()) == 1


def test_mask_training_resumes_where_it_stopped_and_runs_under_torchrun(tiny_world, tmp_path, monkeypatch):
    """The generators train in the students' loop: an interrupted run goes on from last.pt
    to the weights of an uninterrupted one, and two torchrun ranks keep the same weights."""
    import os

    from vexkd_train.masks import MaskObjective

    dataroot, world = tiny_world
    config = load_config("tiny", ["model.lidar.sweeps=1", "train.batch_size=1", "train.checkpoint_every=2"])
    torch.manual_seed(0)
    teacher = save_checkpoint(tmp_path / "teacher.pt", build_model(config, "fusion"), config, "fusion")
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(config, True))
    settings = MaskSettings(masks_per_generator=2, blocks=1, epochs=2)  # 4 samples of batch 1: 8 steps

    def generators(path: Path) -> dict:
        return torch.load(path, weights_only=True)["generators"]

    straight = generators(train_masks(teacher, source, tmp_path / "straight", settings, progress=False))
    forward, calls = MaskObjective.forward, []

    def interrupted(self, batch, targets):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return forward(self, batch, targets)

    monkeypatch.setattr(MaskObjective, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_masks(teacher, source, tmp_path / "resumed", settings, progress=False)
    monkeypatch.setattr(MaskObjective, "forward", forward)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 4
    resumed = generators(train_masks(teacher, source, tmp_path / "resumed", settings, progress=False, resume=True))
    for key in straight:
        for name in straight[key]:
            assert torch.equal(straight[key][name], resumed[key][name]), (key, name)
    assert len((tmp_path / "resumed" / "log.csv").read_text().splitlines()) == 1 + 8

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vexkd_train.cli",
         "masks", "--teacher", str(teacher), "--dataroot", str(dataroot), "--out", str(tmp_path / "ddp"),
         "--masks-per-generator", "2", "--blocks", "1", "--max-steps", "2", "--report-split", "train"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    progress = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert progress["world_size"] == 2 and progress["step"] == 2
    first, second = progress["rank_checksums"]
    assert first == second
