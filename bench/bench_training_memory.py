"""Memory of the training STEP at the `nuscenes` preset on a full-resolution world, per
allocator setting: what stays resident between steps, the peak, and what of it is live.

Writes once (data/bench/, which git ignores; reused afterwards) a synthetic world of six
1600x900 cameras and a 32-beam LiDAR with 10 sweeps, 24 train samples, and runs each stage
(`vexkd-train student --modality camera`, `teacher`, `masks`, and the camera student at the
`tiny` preset on a small world) for --steps steps in a fresh process per allocator setting,
the settings interleaved (default, chosen, default, chosen, ... with --rounds), so a shared
machine's load falls on all of them alike. After every optimizer step (a torch post-step
hook in the training process) it records:

- resident memory (VmRSS, and RssAnon: the process's own pages, no library code) and the
  peak so far (VmHWM);
- glibc's account (mallinfo2): live in its heaps, mmapped blocks (live too), and freed but
  kept in its heaps;
- the step's wall time (data loading included).

Allocator settings: `default` is glibc's (what the entry points leave), `chosen` the fixed
128 KiB threshold they set on request (VEXKD_ALLOCATOR=fixed-mmap, vexkd_core/allocator.py), `mmap-1m` a 1 MiB threshold (MALLOC_MMAP_THRESHOLD_),
`trim` glibc's default with malloc_trim(0) after each step. Figures are ratios against
`default` (interleaved in one run where the run had both). Prints a table and records
bench/results/training_memory.json (a setting run again replaces its runs of that stage; the
other settings' and stages' are kept).

    python bench/bench_training_memory.py [--stages camera teacher masks tiny] [--steps 48]
        [--settings default chosen] [--rounds 1] [--narrow]

--narrow cuts the network widths as tests/test_full_resolution.py does (inputs, grids,
sweeps and augmentation stay the preset's): a CPU step in seconds instead of minutes.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
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

from vexkd_core.allocator import glibc, malloc_figures  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "training_memory.json"
# Four scenes of eight key frames, one of them val: 24 train samples, as issue 35 measured.
WORLD = dict(scenes=4, val_scenes=1, samples_per_scene=8, camera_sweeps=0, image_size=(1600, 900))
TINY_WORLD = dict(scenes=4, val_scenes=1, samples_per_scene=8, camera_sweeps=0, image_size=(480, 270))
NARROW = ["model.bev_channels=32", "model.decoder_channels=[32,64]", "model.decoder_out_channels=64",
          "model.head_channels=32", "model.camera.backbone=small", "model.camera.feature_channels=64",
          "model.lidar.pillar_channels=32", "model.fusion.layers=1", "model.fusion.heads=4",
          "model.fusion.ffn_channels=64"]
def preset_world(preset_name: str) -> Path:
    """The shared synthetic world of a preset's sensors (written once under data/bench/):
    TINY_WORLD for `tiny`, WORLD (1600x900) for `nuscenes`."""
    return synth_world(*(("training-memory-tiny", TINY_WORLD) if preset_name == "tiny"
                         else ("training-memory-1600x900", WORLD)))[0]


SETTINGS = {"default": {}, "chosen": {"VEXKD_ALLOCATOR": "fixed-mmap"},
            "mmap-1m": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}, "trim": {}}
MB = 2**20


def process_memory() -> dict[str, float]:
    """MiB: resident, resident anonymous (the process's own pages) and peak resident."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {key: int(fields[key].split()[0]) for key in ("VmRSS", "RssAnon", "VmHWM")}
    return {"rss": kib["VmRSS"] / 1024, "rss_anon": kib["RssAnon"] / 1024, "peak": kib["VmHWM"] / 1024}


def probe() -> dict[str, float]:
    """One row: process memory and glibc's account of it, MiB."""
    row = process_memory()
    figures = malloc_figures()
    if figures is not None:
        row.update({key: value / MB for key, value in figures.items()})
    return {key: round(value, 1) for key, value in row.items()}


class StepProbe:
    """Called after every optimizer step: records probe() and the time since the last one."""

    def __init__(self, trim: bool = False):
        self.rows: list[dict] = []
        self.trim = glibc().malloc_trim if trim else None
        self.last = time.perf_counter()

    def __call__(self, *_) -> None:
        if self.trim is not None:
            self.trim(ctypes.c_size_t(0))
        now = time.perf_counter()
        self.rows.append({"seconds": round(now - self.last, 3), **probe()})
        self.last = now


def summary(rows: list[dict]) -> dict:
    """The figures a run is judged by, from its rows (steps counted from 1)."""
    later = rows[1:] or rows  # the first step pays for lazy allocation

    def peak_after(step: int) -> float | None:
        return rows[step - 1]["peak"] if len(rows) >= step else None

    out = {"steps": len(rows), "seconds_per_step": round(statistics.median(r["seconds"] for r in later), 3),
           "rss_between_steps_mb": round(statistics.median(r["rss"] for r in later), 1),
           "rss_between_steps_max_mb": round(max(r["rss"] for r in later), 1),
           "peak_after_12_mb": peak_after(12), "peak_after_32_mb": peak_after(32),
           "peak_mb": rows[-1]["peak"]}
    if "live" in rows[-1]:
        # Resident anonymous memory against what glibc says is live (heap blocks in use + mmapped)
        out["kept_by_malloc_mb"] = round(statistics.median(r["kept"] for r in later), 1)
        out["live_malloc_mb"] = round(statistics.median(r["live"] + r["mmapped"] for r in later), 1)
        out["rss_anon_over_live"] = round(statistics.median(r["rss_anon"] / (r["live"] + r["mmapped"])
                                                            for r in later), 3)
        # What malloc does not account for at all: relocated library data, Python's own arenas,
        # thread stacks. Flat from step to step unless something outside malloc grows.
        outside = [r["rss_anon"] - r["live"] - r["mmapped"] - r["kept"] for r in later]
        out["outside_malloc_mb"] = round(statistics.median(outside), 1)
        out["outside_malloc_range_mb"] = [round(min(outside), 1), round(max(outside), 1)]
    return out


def child(arguments: list[str], trim: bool, rows_file: Path) -> None:
    """The training process: the CLI with the probe after each optimizer step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench_full_resolution import train_in_this_process

    step_probe = StepProbe(trim)
    register_optimizer_step_post_hook(step_probe)
    try:
        train_in_this_process(arguments)
    finally:
        rows_file.write_text(json.dumps(step_probe.rows))


def measured(arguments: list[str], setting: str, threads: int) -> dict:
    """One training in a fresh process under `setting`: its rows and summary, or its error."""
    with tempfile.NamedTemporaryFile(suffix=".json") as rows_file:
        env = {key: value for key, value in os.environ.items()
               if key != "VEXKD_ALLOCATOR" and not key.startswith("MALLOC_")}
        env.update(SETTINGS[setting], OMP_NUM_THREADS=str(threads))
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                                 json.dumps([arguments, setting == "trim", rows_file.name])],
                                capture_output=True, text=True, env=env)
        wall = round(time.monotonic() - started, 1)
        if result.returncode != 0:
            reason = f"killed by signal {-result.returncode} (out of memory?)" if result.returncode < 0 else \
                (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            return {"setting": setting, "error": reason, "wall_s": wall}
        rows = json.loads(Path(rows_file.name).read_text())
    return {"setting": setting, "wall_s": wall, **summary(rows), "rows": rows}


def stage_arguments(stage: str, world: Path, tiny_world: Path, run: Path, steps: int, narrow: bool,
                    batch: int) -> list[str]:
    widths = [a for item in NARROW for a in ("--set", item)] if narrow and stage != "tiny" else []
    common = ["--device", "cpu", "--max-steps", str(steps), "--max-epochs", "1000"]
    preset = ["--config", "nuscenes", *widths, "--set", f"train.batch_size={batch}", "--set", "train.workers=0"]
    if stage == "camera":
        return ["student", "--modality", "camera", "--dataroot", str(world), *preset, *common, "--out", str(run)]
    if stage == "teacher":
        return ["teacher", "--dataroot", str(world), *preset, *common, "--out", str(run)]
    if stage == "masks":
        return ["masks", "--teacher", str(run.parent / "masks-teacher" / "model.pt"), "--dataroot", str(world),
                *common, "--batch-size", str(batch), "--out", str(run)]
    if stage == "tiny":
        return ["student", "--modality", "camera", "--dataroot", str(tiny_world), "--config", "tiny",
                "--set", f"train.batch_size={batch}", "--set", "train.workers=0", *common, "--out", str(run)]
    raise ValueError(stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=("camera", "teacher", "masks", "tiny"),
                        default=["camera", "teacher", "masks", "tiny"])
    parser.add_argument("--steps", type=int, default=48, help="steps per run (48: two epochs of the world)")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=["default", "chosen"])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of every setting")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainings")
    parser.add_argument("--narrow", action="store_true", help="cut network widths (not inputs) for CPU time")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arguments, trim, rows_file = json.loads(args.child)
        return child(arguments, trim, Path(rows_file))
    world = preset_world("nuscenes")
    if not any(world.glob("vexkd_gt_database_*")):  # the preset's GT-paste reads it
        subprocess.run([str(Path(sys.executable).parent / "vexkd-data"), "gt-database", "--dataroot", str(world),
                        "--version", VERSION], check=True, capture_output=True)
    tiny_world = preset_world("tiny") if "tiny" in args.stages else None
    figures = json.loads(args.results.read_text()) if args.results.is_file() else {}
    stages = figures.setdefault("stages", {})
    with tempfile.TemporaryDirectory(prefix="vexkd-training-memory-") as scratch:
        scratch = Path(scratch)
        if "masks" in args.stages:  # the mask generators train against a teacher: one step of one
            teacher = stage_arguments("teacher", world, tiny_world, scratch / "masks-teacher", 1, args.narrow, 1)
            subprocess.run([str(Path(sys.executable).parent / "vexkd-train"), *teacher], check=True,
                           capture_output=True)
        for stage in args.stages:
            runs = []
            for round_ in range(args.rounds):
                for setting in args.settings:
                    out = scratch / f"{stage}-{setting}-{round_}"
                    run = measured(stage_arguments(stage, world, tiny_world, out, args.steps, args.narrow,
                                                   args.batch), setting, args.threads)
                    runs.append({"round": round_, **run})
                    print(_line(stage, run), flush=True)
            narrow = args.narrow and stage != "tiny"
            name = f"{stage} batch {args.batch}" + (" narrow" if narrow else "")
            # A setting measured again replaces that setting's runs; the others' stay, so the
            # settings of a slow stage (a full-width step takes minutes) can be run one at a time.
            kept = [run for run in stages.get(name, {}).get("runs", []) if run["setting"] not in args.settings]
            runs = kept + runs
            stages[name] = {"preset": "tiny" if stage == "tiny" else "nuscenes", "narrow": narrow,
                            "batch": args.batch, "threads": args.threads, "runs": runs, "against_default": _ratios(runs)}
    figures.update({"world": {k: list(v) if isinstance(v, tuple) else v for k, v in WORLD.items()},
                    "tiny_world": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_WORLD.items()},
                    "cpus": os.cpu_count(), "python": platform.python_version(), "glibc": platform.libc_ver()[1]})
    atomic_write_json(args.results, figures)
    for name in stages:
        for setting, ratio in stages[name]["against_default"].items():
            print(f"{name:<18} {setting:<8} against default: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    print(f"recorded {args.results}")


def _ratios(runs: list[dict]) -> dict:
    """Per setting, its medians over rounds divided by default's."""
    keys = ("rss_between_steps_mb", "peak_mb", "seconds_per_step")
    medians = {}
    for setting in dict.fromkeys(run["setting"] for run in runs):
        done = [run for run in runs if run["setting"] == setting and "error" not in run]
        if done:
            medians[setting] = {key: statistics.median(run[key] for run in done) for key in keys}
    base = medians.get("default")
    return {} if base is None else {setting: {key: round(value[key] / base[key], 3) for key in keys}
                                    for setting, value in medians.items() if setting != "default"}


def _line(stage: str, run: dict) -> str:
    if "error" in run:
        return f"{stage:<8} {run['setting']:<8} failed after {run['wall_s']:.0f} s: {run['error']}"
    peaks = "/".join(f"{run[k]:.0f}" if run[k] is not None else "-" for k in ("peak_after_12_mb", "peak_after_32_mb"))
    live = f", live {run['live_malloc_mb']:.0f} kept {run['kept_by_malloc_mb']:.0f} MB, RssAnon/live " \
           f"{run['rss_anon_over_live']:.2f}" if "live_malloc_mb" in run else ""
    return (f"{stage:<8} {run['setting']:<8} {run['steps']} steps, {run['seconds_per_step']:.2f} s/step, "
            f"RSS between steps {run['rss_between_steps_mb']:.0f} MB (max {run['rss_between_steps_max_mb']:.0f}), "
            f"peak after 12/32 steps {peaks}, peak {run['peak_mb']:.0f} MB{live}")


if __name__ == "__main__":
    main()
