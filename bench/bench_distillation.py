"""What distillation costs at training time, as ratios measured in one run on this machine:

- a distilled student step (teacher forward + mask generators + masked losses) over a plain
  student step, per modality and mask kind (soft: MasKD's, the default; decided);
- a mask-generator step (4 generators x T masks through the frozen teacher) over a plain
  student step, per mask kind, and the seconds one mask-training epoch of the demo world takes.

Random-weight models on a real synthetic sample (costs do not depend on the weights);
prints the figures and records bench/results/distillation.json.

    python bench/bench_distillation.py --dataroot demo/world [--preset tiny] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from vexkd_core.config import load_config  # noqa: E402
from vexkd_core.data.dataset import EpochSampler, TrainingSet, collate_training, model_source  # noqa: E402
from vexkd_core.distill.distiller import Distiller, freeze  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.models.vexkd import build_model  # noqa: E402
from vexkd_train.masks import KINDS, MaskSettings, build_generators, step_losses  # noqa: E402

RESULTS = REPO / "bench" / "results" / "distillation.json"


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def student_step(student, batch, targets, optimizer, distiller=None):
    def step():
        output = student(batch)
        box_targets = student.box_targets(targets, "cpu")
        losses = student.losses(output, targets, batch, box_targets)
        if distiller is not None:
            losses.update(distiller(student, batch, output, targets, box_targets))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def mask_step(teacher, generators, batch, targets, settings, optimizer):
    def step():
        total = sum(loss.total(settings) for loss in step_losses(teacher, generators, batch, targets, settings).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, default=REPO / "demo" / "world")
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "nuscenes"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.preset)
    source = model_source(args.dataroot, args.version, "train", config, True)
    dataset = TrainingSet(source, config, augment=True)
    batch, targets = collate_training([dataset[i] for i in range(config.train.batch_size)])
    torch.manual_seed(0)
    teacher = freeze(build_model(config, "fusion"))
    seconds, generators = {}, {}
    for mask_kind in KINDS:
        settings = MaskSettings.recipe(mask_kind)
        generators[mask_kind] = build_generators(teacher, settings)
        parameters = [p for g in generators[mask_kind].values() for p in g.parameters()]
        seconds[f"{mask_kind} mask step"] = median_seconds(mask_step(
            teacher, generators[mask_kind], batch, targets, settings, torch.optim.Adam(parameters)), args.repeats)
    for modality in ("lidar", "camera"):
        for kind in ("plain", *KINDS):
            torch.manual_seed(0)
            student = build_model(config, modality).train()
            distiller = None if kind == "plain" else Distiller(
                teacher, student, "vexkd", ("low", "high"), "at", {"low": 1.0, "high": 1.0}, generators[kind])
            optimizer = torch.optim.AdamW(student.parameters())
            name = f"{modality} plain step" if kind == "plain" else f"{modality} distilled step, {kind} masks"
            seconds[name] = median_seconds(student_step(student, batch, targets, optimizer, distiller), args.repeats)
    ratios = {f"{m} distilled ({kind} masks) / plain step": seconds[f"{m} distilled step, {kind} masks"]
              / seconds[f"{m} plain step"] for m in ("lidar", "camera") for kind in KINDS}
    ratios.update({f"{kind} mask step / lidar plain step": seconds[f"{kind} mask step"] / seconds["lidar plain step"]
                   for kind in KINDS})
    steps_per_epoch = EpochSampler(len(dataset), config.train.batch_size, 0).batches_per_epoch()
    epoch_seconds = {kind: seconds[f"{kind} mask step"] * steps_per_epoch for kind in KINDS}
    masks_per_generator = MaskSettings().masks_per_generator
    print(f"{args.preset} preset, CPU, {torch.get_num_threads()} threads, batch {config.train.batch_size}, "
          f"T = {masks_per_generator} masks per generator (median of {args.repeats})")
    for name, value in seconds.items():
        print(f"  {name:40s} {value:6.2f} s")
    for name, value in ratios.items():
        print(f"  {name:48s} {value:5.2f}")
    for kind, value in epoch_seconds.items():
        print(f"  one {kind} mask-training epoch of {len(dataset)} samples: {value:.0f} s")
    results = RESULTS if args.preset == "tiny" else RESULTS.with_name(f"distillation_{args.preset}.json")
    atomic_write_json(results, {"preset": args.preset, "machine": f"{platform.machine()} "
                                f"{torch.get_num_threads()} threads", "batch": config.train.batch_size,
                                "masks_per_generator": masks_per_generator, "seconds": seconds,
                                "ratios": ratios, "mask_epoch_seconds": epoch_seconds,
                                "train_samples": len(dataset)})
    print(f"recorded {results}")


if __name__ == "__main__":
    main()
