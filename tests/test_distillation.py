"""Distillation: generators start from the teacher's fusion query, the teacher never
changes, gradients reach only what each stage trains, every mask mode yields a finite
loss, and a distilled student is exactly the baseline architecture."""
import json

import numpy as np
import pytest
import torch

from vexkd_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, collate_training, model_source
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import GENERATED, MODES, Distiller
from vexkd_core.distill.losses import MaskedDistillLoss, attention_map
from vexkd_core.models.vexkd import build_model
from vexkd_train.masks import MaskSettings, build_generators, load_masks, train_masks
from vexkd_train.trainer import RunOptions, train

pytestmark = pytest.mark.slow

CONFIG = load_config("tiny", ["model.lidar.sweeps=1", "train.batch_size=1"])


@pytest.fixture(scope="module")
def source(tiny_world):
    dataroot, world = tiny_world
    return model_source(dataroot, world.version, "train", CONFIG, True)


@pytest.fixture(scope="module")
def teacher_and_masks(source, tmp_path_factory):
    """A random-weight teacher, its checksum before anything else ran, and its generators."""
    folder = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    teacher = build_model(CONFIG, "fusion")
    TEACHER_BEFORE["checksum"] = checksum(teacher)
    checkpoint = save_checkpoint(folder / "teacher.pt", teacher, CONFIG, "fusion")
    masks = train_masks(checkpoint, source, folder / "masks", MaskSettings(blocks=1, epochs=1), progress=False)
    return checkpoint, masks


TEACHER_BEFORE: dict[str, float] = {}
GENERATED_LOSSES = {f"distill_{level}_{task}" for level in ("low", "high") for task in ("detection", "segmentation")}


def checksum(module: torch.nn.Module) -> float:
    return float(sum(p.double().abs().sum() for p in module.state_dict().values() if p.is_floating_point()))


def test_generators_start_from_the_teachers_fusion_query(teacher_and_masks):
    teacher, _, _ = model_from_checkpoint(teacher_and_masks[0])
    learned = build_generators(teacher, MaskSettings(blocks=1))
    random = build_generators(teacher, MaskSettings(blocks=1, query="random"))
    fused = build_generators(teacher, MaskSettings(blocks=1, query="fused"))
    for key in learned:
        assert torch.equal(learned[key].query, teacher.fuser.bev_query)
        assert torch.equal(learned[key].position, teacher.fuser.bev_position)
        assert not torch.allclose(random[key].query, teacher.fuser.bev_query)
        # The fused map is each sample's query: the generator has no query of its own to learn.
        assert fused[key].query is None and torch.equal(fused[key].position, teacher.fuser.bev_position)
    assert set(learned) == {"detection/low", "detection/high", "segmentation/low", "segmentation/high"}


def test_a_fused_map_generator_reads_each_samples_fused_map(teacher_and_masks, source):
    teacher, _, _ = model_from_checkpoint(teacher_and_masks[0])
    generator = build_generators(teacher, MaskSettings(blocks=1, query="fused"))["detection/high"].eval()
    batch, _ = one_batch(source)
    with torch.no_grad():
        output = teacher(batch)
        assert output.fused is not None and output.fused.shape[-2:] == generator.query_size
        masks = generator(output.high, output.fused)
        # Another fused map (the same feature) gives other masks: the query is the map.
        other = generator(output.high, output.fused.flip(-1))
    assert masks.shape[1] == generator.mask_count and not torch.allclose(masks, other)
    with pytest.raises(ValueError, match="needs the teacher's fused map"):
        generator(output.high)


def test_mask_training_changes_the_generators_but_not_the_teacher(teacher_and_masks):
    checkpoint, masks = teacher_and_masks
    teacher, _, _ = model_from_checkpoint(checkpoint)
    trained = load_masks(masks, teacher)
    untrained = build_generators(teacher, MaskSettings(blocks=1))
    assert any(not torch.equal(trained[k].head.weight, untrained[k].head.weight) for k in trained)
    # Against the teacher as it was built, before mask training (and before the student
    # tests of this module, which may run first) touched it or its checkpoint.
    assert checksum(teacher) == TEACHER_BEFORE["checksum"]


def one_batch(source):
    dataset = TrainingSet(source, CONFIG, augment=True)
    return collate_training([dataset[0]])


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_every_distill_mode_trains_a_step_with_a_finite_loss_and_right_gradients(mode, source, teacher_and_masks):
    checkpoint, masks = teacher_and_masks
    teacher, _, _ = model_from_checkpoint(checkpoint)
    teacher_before = checksum(teacher)
    student = build_model(CONFIG, "lidar").train()
    generators = None if mode not in GENERATED else build_generators(teacher, MaskSettings(blocks=1, query="fused")) \
        if mode == "fused-query" else load_masks(masks, teacher)
    distiller = Distiller(teacher, student, mode, ("low", "high"), "mse", {"low": 1.0, "high": 1.0}, generators)
    # The trainer optimises the student's and the distiller's parameters: none may be both.
    assert not {id(p) for p in distiller.parameters()} & {id(p) for p in student.parameters()}
    batch, targets = one_batch(source)
    output = student(batch)
    losses = distiller(student, batch, output, targets)
    # Generated masks stay per task; the hand-made baselines have one set per level.
    assert set(losses) == (GENERATED_LOSSES if mode in GENERATED else {"distill_low", "distill_high"})
    # A generated mask may take no cell of this sample (these generators had a step or two):
    # then its level and task have nothing to compare (see the empty-mask test below).
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values()) and sum(losses.values()) > 0, losses
    (sum(losses.values()) + sum(student.task_losses(output, targets).values())).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for g in distiller.generators.values() for p in g.parameters())
    assert student.lidar_encoder.linear.weight.grad.abs().sum() > 0
    assert teacher.training is False and checksum(teacher) == teacher_before


def test_distilled_student_is_the_baseline_architecture(source, teacher_and_masks, tmp_path):
    checkpoint, masks = teacher_and_masks
    teacher, _, _ = model_from_checkpoint(checkpoint)
    teacher_before = checksum(teacher)
    options = dict(max_steps=2, progress=False)
    torch.manual_seed(0)
    baseline = train(build_model(CONFIG, "camera"), CONFIG, source, "camera", RunOptions(tmp_path / "base", **options))
    torch.manual_seed(0)
    student = build_model(CONFIG, "camera")
    distiller = Distiller(teacher, student, "vexkd", ("low", "high"), "at", {"low": 1.0, "high": 1.0},
                          load_masks(masks, teacher))
    distilled = train(student, CONFIG, source, "camera", RunOptions(tmp_path / "kd", **options), distiller)
    base_state, kd_state = load_checkpoint(baseline)["model"], load_checkpoint(distilled)["model"]
    assert list(base_state) == list(kd_state)
    assert all(base_state[k].shape == kd_state[k].shape for k in base_state)
    assert checksum(teacher) == teacher_before == TEACHER_BEFORE["checksum"]
    log = (tmp_path / "kd" / "log.csv").read_text().splitlines()[0]
    assert all(name in log for name in GENERATED_LOSSES)
    # AdamW stepped every parameter once per step, as for the baseline (a parameter listed twice
    # would be stepped twice: twice the learning rate, and a confound in every distillation gain).
    for run in ("base", "kd"):
        optimizer = load_checkpoint(tmp_path / run / "last.pt")["optimizer"]
        assert [float(state["step"]) for state in optimizer["state"].values()] == \
            [2.0] * len(optimizer["param_groups"][0]["params"])


def test_the_trainer_refuses_a_distiller_holding_the_students_parameters(source, tmp_path):
    student = build_model(CONFIG, "lidar")
    holder = torch.nn.Module()
    holder.student = student
    with pytest.raises(ValueError, match="twice"):
        train(student, CONFIG, source, "lidar", RunOptions(tmp_path, max_steps=1, progress=False), holder)


def test_attention_transfer_needs_no_adapter_and_detaches_teacher_and_masks():
    student, teacher = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 16, 6, 6, requires_grad=True)
    masks = torch.rand(2, 3, 6, 6, requires_grad=True)
    at = MaskedDistillLoss(8, 16, "at")
    assert isinstance(at.adapter, torch.nn.Identity)
    at(student, teacher, masks).backward()
    assert student.grad is not None and teacher.grad is None and masks.grad is None
    assert isinstance(MaskedDistillLoss(8, 16, "mse").adapter, torch.nn.Conv2d)
    same = torch.randn(2, 8, 6, 6)
    assert MaskedDistillLoss(8, 8, "at")(same, same, torch.ones(2, 1, 6, 6)).item() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(attention_map(same).norm(dim=1).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["at", "mse", "l1"])
def test_an_empty_mask_has_nothing_to_compare_and_does_not_dilute_the_loss(kind):
    """Decided masks can take no cell of a sample: the loss is the mean over the masks that
    pick cells, the same with or without empty ones, and 0 (with a graph) when none does."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 8, 6, 6)
    picked = torch.zeros(2, 2, 6, 6)
    picked[:, 0, :3] = 1
    picked[:, 1, 3:, :2] = 1
    loss = MaskedDistillLoss(8, 8, kind)
    with_empty = torch.cat([picked, torch.zeros(2, 1, 6, 6)], 1)
    assert loss(student, teacher, with_empty).item() == pytest.approx(loss(student, teacher, picked).item(), rel=1e-6)
    assert loss(student, teacher, picked).item() > 0
    # The second sample's masks all empty: the first sample's pairs alone.
    one_sample = picked.clone()
    one_sample[1] = 0
    assert loss(student, teacher, one_sample).item() == pytest.approx(
        loss(student[:1], teacher[:1], picked[:1]).item(), rel=1e-6)
    nothing = loss(student, teacher, torch.zeros(2, 3, 6, 6))
    assert nothing.item() == 0.0
    nothing.backward()
    assert student.grad is not None


def test_masks_and_distilled_student_from_the_command_line(tiny_world, teacher_and_masks, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    binary = str(Path(sys.executable).parent / "vexkd-train")
    teacher = str(teacher_and_masks[0])
    masks = subprocess.run([binary, "masks", "--teacher", teacher, "--dataroot", str(tiny_world[0]), "--out",
                            str(tmp_path / "masks"), "--max-epochs", "1", "--blocks", "1", "--export-split", "val"],
                           capture_output=True, text=True)
    assert masks.returncode == 0, masks.stderr[-2000:]
    # The selectivity report: printed and stored, one row per mask of every generator.
    report = json.loads((tmp_path / "masks" / "selectivity.json").read_text())
    assert {key: len(rows) for key, rows in report.items()} == {
        f"{task}/{level}": MaskSettings().masks_per_generator for task in ("detection", "segmentation")
        for level in ("low", "high")}
    assert "| detection/low | 0 |" in masks.stdout and "cells > 0.5" in masks.stdout
    # Exported on request: every val sample's masks, per task and level, T masks each at the feature size.
    exported = np.load(tmp_path / "masks" / "masks_val.npz")
    val = NuScenesSource(tiny_world[0], tiny_world[1].version, "val", 1)
    assert set(exported.files) == {f"{token}/{task}/{level}" for token in val.tokens
                                   for task in ("detection", "segmentation") for level in ("low", "high")}
    first = exported[f"{val.tokens[0]}/detection/low"]
    assert first.shape[0] == MaskSettings().masks_per_generator and 0.0 <= first.min() <= first.max() <= 1.0
    common = [binary, "student", "--modality", "lidar", "--dataroot", str(tiny_world[0]), "--set", "model.lidar.sweeps=1",
              "--set", "train.batch_size=1", "--teacher", teacher, "--out", str(tmp_path / "kd"), "--max-steps", "1"]
    distilled = subprocess.run(common + ["--distill", "vexkd", "--masks", str(tmp_path / "masks" / "masks.pt")],
                               capture_output=True, text=True)
    assert distilled.returncode == 0, distilled.stderr[-2000:]
    assert "distill_low_detection" in (tmp_path / "kd" / "log.csv").read_text()
    missing = subprocess.run(common + ["--distill", "vexkd"], capture_output=True, text=True)
    assert missing.returncode == 2 and "needs --masks" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
