"""What trained mask generators do on a split, measured: how selective each mask is
(selectivity.json / .md, written by `vexkd-train masks`) and how alike two sets of generators'
masks are (the fusion-query and random-query ablation)."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.mask_generator import MaskGenerator
from vexkd_core.io import atomic_write_bytes, atomic_write_json


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
            meter.add(first[key].eval()(feature, output.fused)[0], second[key].eval()(feature, output.fused)[0])
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
            meters[key].add(generator.eval()(getattr(output, level), output.fused)[0], regions[task])
    return as_report(meters)


def write_selectivity(teacher, generators, source: NuScenesSource, out: Path, device: str, progress: bool) -> dict:
    from vexkd_core.distill.selectivity import selectivity_table

    report = measure_selectivity(teacher, generators, source, device, progress)
    atomic_write_json(out / "selectivity.json", report)
    atomic_write_bytes(out / "selectivity.md", (selectivity_table(report) + "\n").encode())
    return report


def query_movement(started: dict[str, torch.Tensor], generators: dict[str, MaskGenerator],
                   teacher_query: torch.Tensor | None) -> dict[str, dict[str, float]]:
    """How far mask training moved each generator's query from where it `started` (|q - q0| /
    |q0|), and its mean per-cell cosine to the teacher's MGFM query (None for a ConvFuser
    teacher): near 0 and 1, the masks owe little to what the query learned in mask training.
    Generators whose query is each sample's fused map have none to move (left out)."""
    movement = {}
    for key, generator in generators.items():
        if generator.query is None:
            continue
        query = generator.query.detach()
        cosine = None if teacher_query is None else \
            float(torch.nn.functional.cosine_similarity(query, teacher_query.to(query), dim=1).mean())
        movement[key] = {"relative_change": float((query - started[key]).norm() / started[key].norm()),
                         "cosine_to_teacher_query": cosine}
    return movement
