"""Inference latency of the teacher, the baseline students and the distilled students,
measured in one run on this machine, per stage.

Uses the demo's trained checkpoints when `make demo` has produced them (demo/runs/...),
otherwise random-weight models of the same configs (latency does not depend on the
weights). Prints a table with the distilled/baseline ratio (the same network: ~1.0) and
records bench/results/models.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from vexkd_core.checkpoint import model_from_checkpoint  # noqa: E402
from vexkd_core.config import preset  # noqa: E402
from vexkd_core.data.preprocess import Batch  # noqa: E402
from vexkd_core.data.sample import CAMERA_CHANNELS  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.models.vexkd import build_model  # noqa: E402
from vexkd_core.timing import StageTimer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "models.json"
RUNS = REPO / "demo" / "runs"
MODELS = {"teacher": ("fusion", "teacher"), "lidar baseline": ("lidar", "lidar"),
          "lidar distilled": ("lidar", "lidar-vexkd"), "camera baseline": ("camera", "camera"),
          "camera distilled": ("camera", "camera-vexkd")}


def synthetic_batch(config, points: int = 100_000) -> Batch:
    """A batch shaped like a real sample (~100k points over 4 sweeps, 6 cameras)."""
    generator = torch.Generator().manual_seed(0)
    extent = config.grid.half_extent_m
    xyz = (torch.rand(points, 3, generator=generator) * 2 - 1) * torch.tensor([extent, extent, 2.0])
    cloud = torch.cat([torch.zeros(points, 1), xyz, torch.rand(points, 2, generator=generator)], dim=1)
    camera = config.model.camera
    intrinsics = torch.tensor([[400.0, 0, 240], [0, 400.0, 135], [0, 0, 1]]).expand(len(CAMERA_CHANNELS), 3, 3)
    scale = camera.input_width / 480
    transform = torch.tensor([[scale, 0, 0], [0, scale, -20.0], [0, 0, 1]]).expand(len(CAMERA_CHANNELS), 3, 3)
    camera_to_lidar = torch.eye(4).expand(len(CAMERA_CHANNELS), 4, 4).clone()
    camera_to_lidar[:, :3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    return Batch(cloud, torch.randn(1, len(CAMERA_CHANNELS), 3, camera.input_height, camera.input_width,
                                    generator=generator), intrinsics[None], camera_to_lidar[None], transform[None],
                 torch.eye(4)[None], torch.ones(1, len(CAMERA_CHANNELS), dtype=torch.bool), 1)


def load(modality: str, run: str, config, use_trained: bool):
    checkpoint = RUNS / run / "model.pt"
    if use_trained and checkpoint.is_file():
        return model_from_checkpoint(checkpoint, expected_modality=modality)[0], "trained"
    torch.manual_seed(0)
    return build_model(config, modality).eval(), "random weights"


@torch.no_grad()
def measure(model, batch: Batch, repeats: int) -> dict[str, float]:
    timer = StageTimer()
    model(batch)  # warm-up
    for _ in range(repeats):
        timer.measure("total", model, batch, timer)
    return {stage: 1e3 * statistics.median(values) for stage, values in timer.seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "nuscenes"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = preset(args.preset)
    batch = synthetic_batch(config)
    rows = {}
    for name, (modality, run) in MODELS.items():
        model, origin = load(modality, run, config, use_trained=args.preset == "tiny")  # the demo trains tiny
        rows[name] = {"origin": origin, "parameters": sum(p.numel() for p in model.parameters()),
                      "latency_ms": measure(model, batch, args.repeats)}
    print(f"{args.preset} preset, CPU, {torch.get_num_threads()} threads, batch 1 (ms, median of {args.repeats})")
    for name, row in rows.items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["latency_ms"].items() if k != "total")
        print(f"  {name:17s} {row['latency_ms']['total']:7.1f} ms  {row['parameters'] / 1e6:5.2f} M  "
              f"({row['origin']}; {stages})")
    ratios = {modality: rows[f"{modality} distilled"]["latency_ms"]["total"] /
              rows[f"{modality} baseline"]["latency_ms"]["total"] for modality in ("lidar", "camera")}
    speedups = {modality: rows["teacher"]["latency_ms"]["total"] / rows[f"{modality} baseline"]["latency_ms"]["total"]
                for modality in ("lidar", "camera")}
    print("  distilled / baseline latency: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("  teacher / student latency:    " + ", ".join(f"{k} {v:.2f}" for k, v in speedups.items()))
    results = RESULTS if args.preset == "tiny" else RESULTS.with_name(f"models_{args.preset}.json")
    atomic_write_json(results, {"preset": args.preset, "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                                "models": rows, "distilled_over_baseline": ratios, "teacher_over_student": speedups})
    print(f"recorded {results}")


if __name__ == "__main__":
    main()
