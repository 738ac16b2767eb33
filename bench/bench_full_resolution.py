"""The paper-scale path, measured: every model at the `nuscenes` preset on a full-resolution
world (six 1600x900 JPEG cameras, 32-beam LiDAR, 10 sweeps), through the commands a user
runs: `vexkd-data gt-database`, then per batch size the teacher, its mask generators and
both VeXKD-distilled students a few steps each, and `vexkd-train eval` of every model.

Each (stage, batch size) runs in its own process, so its peak resident memory (and, on
CUDA, its peak allocated GPU memory) is its own. Seconds per step are the median of the
steps after the first (the first pays for lazy allocation). Prints a table and records
bench/results/full_resolution.json (CPU) or the file given by --results.

    python bench/bench_full_resolution.py [--device cpu|cuda] [--steps 3] [--batch-sizes 1 2]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_data_loading import VERSION, synth_world  # noqa: E402

from vexkd_core.io import atomic_write_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "full_resolution.json"
# Two scenes of two key frames: a training epoch is one or two steps, the evaluations and
# the mask report read two val samples each.
WORLD = dict(scenes=2, val_scenes=1, samples_per_scene=2, camera_sweeps=0, image_size=(1600, 900))
STUDENTS = ("lidar", "camera")


def stage_commands(run: Path, world: Path, batch: int, steps: int, device: str) -> list[tuple[str, list[str]]]:
    """(stage, vexkd-train arguments) in the order they depend on each other."""
    common = ["--dataroot", str(world), "--device", device]
    preset = ["--config", "nuscenes", "--set", f"train.batch_size={batch}", "--max-steps", str(steps)]
    teacher, masks = run / "teacher" / "model.pt", run / "masks" / "masks.pt"
    stages = [("teacher", ["teacher", *common, *preset, "--out", str(teacher.parent)]),
              ("masks", ["masks", "--teacher", str(teacher), *common, "--out", str(masks.parent),
                         "--max-epochs", str(steps), "--max-steps", str(steps)])]
    stages += [(f"{modality} student + VeXKD", ["student", "--modality", modality, "--teacher", str(teacher),
                                                 "--masks", str(masks), "--distill", "vexkd", *common, *preset,
                                                 "--out", str(run / modality)]) for modality in STUDENTS]
    return stages


def eval_commands(run: Path, world: Path, device: str) -> list[tuple[str, list[str]]]:
    return [(f"eval {name}", ["eval", "--checkpoint", str(run / name / "model.pt"), "--dataroot", str(world),
                              "--device", device, "--out", str(run / name / "eval")])
            for name in ("teacher", *STUDENTS)]


def measured(arguments: list[str]) -> dict:
    """Runs one vexkd-train command in a fresh process; its wall time and peak memory, or
    the error it ended with (a stage that runs out of memory is a figure too)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(arguments)],
                            capture_output=True, text=True)
    wall = {"wall_s": round(time.monotonic() - started, 1)}
    if result.returncode != 0:
        reason = "killed by signal %d (out of memory?)" % -result.returncode if result.returncode < 0 else \
            (result.stderr.strip().splitlines() or ["exit %d" % result.returncode])[-1]
        return {"error": reason, **wall}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), **wall}


def train_in_this_process(arguments: list[str]) -> None:
    """`vexkd-train ARGUMENTS` in this process, its progress output discarded; SystemExit on failure."""
    from vexkd_train.cli import main

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        code = main(arguments)
    if code:
        raise SystemExit(code)


def child(arguments: list[str]) -> None:
    """The --child side: the CLI in this process, then its own peak memory on the last line."""
    import torch

    train_in_this_process(arguments)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_gpu_mb": gpu}))


def step_seconds(log: Path) -> tuple[float | None, int]:
    """(median seconds of the steps after the first, steps) from a run's log.csv."""
    with log.open() as stream:
        seconds = [float(row["seconds"]) for row in csv.DictReader(stream)]
    later = seconds[1:] or seconds
    return (round(statistics.median(later), 2) if later else None), len(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="training steps per model and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    world, written_s = synth_world("full-resolution-1600x900", WORLD)
    subprocess.run([str(Path(sys.executable).parent / "vexkd-data"), "gt-database", "--dataroot", str(world),
                    "--version", VERSION, "--overwrite"], check=True, capture_output=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vexkd-full-resolution-") as scratch:
        for batch in args.batch_sizes:
            run = Path(scratch) / f"batch{batch}"
            commands = stage_commands(run, world, batch, args.steps, args.device)
            for stage, arguments in commands + (eval_commands(run, world, args.device) if batch == 1 else []):
                row = {"stage": stage, "batch": batch, **measured(arguments)}
                if "error" not in row:
                    row.update(_speed(stage, Path(arguments[arguments.index("--out") + 1])))
                rows.append(row)
                print(_line(row), flush=True)
                if "error" in row:  # the stages after it read what it did not write
                    break
    figures = {"device": args.device, "world": {k: list(v) if isinstance(v, tuple) else v for k, v in WORLD.items()},
               "world_write_s": None if written_s is None else round(written_s, 1), "rows": rows,
               "cpus": os.cpu_count(), **_torch_facts(), "python": platform.python_version()}
    atomic_write_json(args.results, figures)
    print(f"recorded {args.results}")


def _torch_facts() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _speed(stage: str, out: Path) -> dict:
    """Latency per sample of an evaluation; median seconds per step of a training."""
    if stage.startswith("eval"):
        return {"latency_ms": round(json.loads((out / "metrics.json").read_text())["latency_ms"]["total"], 1)}
    seconds, steps = step_seconds(out / "log.csv")
    return {"seconds_per_step": seconds, "steps": steps}


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['stage']:<24} batch {row['batch']}: failed after {row['wall_s']:.0f} s: {row['error']}"
    memory = f"peak RSS {row['peak_rss_mb']:.0f} MB" + \
        (f", GPU {row['peak_gpu_mb']:.0f} MB" if row.get("peak_gpu_mb") is not None else "")
    speed = f"{row['latency_ms']:.0f} ms per sample" if "latency_ms" in row else \
        f"{row['seconds_per_step']} s/step over {row['steps']} steps"
    return f"{row['stage']:<24} batch {row['batch']}: {speed}, {memory} ({row['wall_s']:.0f} s in all)"


if __name__ == "__main__":
    main()
