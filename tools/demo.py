"""`make demo`: the user journey on the built-in synthetic world, ending in demo/report.md.

Stages run in order; each is skipped when its output from an earlier run is still valid
(its inputs unchanged), so a re-run only redoes what changed. Everything lands in demo/.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
WORLD = DEMO / "world"
RUNS = DEMO / "runs"
BIN = Path(sys.executable).parent
EPOCHS = 15  # the demo schedule: 15 epochs over the 48 train samples, batch 2
TEACHER = RUNS / "teacher" / "model.pt"
MASKS = RUNS / "masks" / "masks.pt"
# The LiDAR student first: the teacher starts its LiDAR branch, decoder and heads from it
# (BEVFusion's practice; without it the short CPU schedule leaves the fusion teacher behind).
MODELS = (("lidar", ["student", "--modality", "lidar"]), ("camera", ["student", "--modality", "camera"]),
          ("teacher", ["teacher", "--init-from", RUNS / "lidar" / "model.pt"]))
DISTILLED = (("lidar-vexkd", "lidar"), ("camera-vexkd", "camera"))


def digest(*parts) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for path in sorted(part.glob("**/*.py")) if part.is_dir() else [part]:
                hasher.update(path.name.encode() + path.read_bytes())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()[:16]


class Stages:
    """Runs stages whose stamp (a digest of their inputs) changed since the last run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.stamps_file = folder / "stamps.json"
        self.stamps = json.loads(self.stamps_file.read_text()) if self.stamps_file.is_file() else {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, stamp: str, outputs: list[Path], action) -> None:
        if self.stamps.get(name) == stamp and all(p.exists() for p in outputs):
            print(f"[demo] {name}: reused from an earlier run", flush=True)
            self.seconds[name] = 0.0
            return
        print(f"[demo] {name} ...", flush=True)
        started = time.monotonic()
        action()
        self.seconds[name] = time.monotonic() - started
        print(f"[demo] {name}: {self.seconds[name]:.0f} s", flush=True)
        from vexkd_core.io import atomic_write_json

        self.stamps[name] = stamp
        atomic_write_json(self.stamps_file, self.stamps)


def command(*arguments) -> None:
    subprocess.run([str(a) for a in arguments], check=True)


def main() -> int:
    sys.path.insert(0, str(REPO))
    from vexkd_core.data.synthetic import demo_config
    from vexkd_core.io import atomic_write_text

    config = demo_config(WORLD)
    stages = Stages(DEMO)
    DEMO.mkdir(exist_ok=True)
    world_stamp = digest({k: v for k, v in asdict(config).items() if k != "workers"},
                         REPO / "vexkd_core" / "data" / "synthetic")
    stages.run("synthetic world", world_stamp, [WORLD / config.version / "sample.json"], lambda: command(
        BIN / "vexkd-data", "synth", "--out", WORLD, "--scenes", config.scenes, "--val-scenes", config.val_scenes,
        "--samples-per-scene", config.samples_per_scene, "--sweeps", config.sweeps,
        "--camera-sweeps", config.camera_sweeps, "--image-size", "x".join(map(str, config.image_size)),
        "--seed", config.seed, "--version", config.version, "--workers", config.workers))
    first_val_sample = config.samples_per_scene * (config.scenes - config.val_scenes)
    stages.run("render a val sample", world_stamp, [DEMO / "sample.png"], lambda: command(
        BIN / "vexkd-data", "render", "--dataroot", WORLD, "--sample", first_val_sample, "--out", DEMO / "sample.png"))

    model_code = digest(REPO / "vexkd_core", REPO / "vexkd_train", EPOCHS)
    metrics = {}
    for name, arguments in MODELS:
        run = RUNS / name
        stamp = digest(world_stamp, model_code, arguments, [stages.stamps.get("train lidar")] if name == "teacher" else [])
        stages.run(f"train {name}", stamp, [run / "model.pt"], lambda: command(
            BIN / "vexkd-train", *arguments, "--dataroot", WORLD, "--config", "tiny", "--out", run,
            "--max-epochs", EPOCHS))
        stages.run(f"evaluate {name}", stamp, [run / "eval" / "metrics.json"], lambda: command(
            BIN / "vexkd-train", "eval", "--checkpoint", run / "model.pt", "--dataroot", WORLD, "--split", "val",
            "--out", run / "eval"))
        metrics[name] = json.loads((run / "eval" / "metrics.json").read_text())
        metrics[name]["step_seconds"] = _median_step_seconds(run / "log.csv")

    teacher_stamp = stages.stamps["train teacher"]
    stages.run("train mask generators", digest(teacher_stamp, model_code), [MASKS], lambda: command(
        BIN / "vexkd-train", "masks", "--teacher", TEACHER, "--dataroot", WORLD, "--out", MASKS.parent,
        "--max-epochs", 1))
    for name, modality in DISTILLED:
        run = RUNS / name
        stamp = digest(stages.stamps["train mask generators"], name)
        stages.run(f"train {name}", stamp, [run / "model.pt"], lambda: command(
            BIN / "vexkd-train", "student", "--modality", modality, "--teacher", TEACHER, "--masks", MASKS,
            "--distill", "vexkd", "--dataroot", WORLD, "--config", "tiny", "--out", run, "--max-epochs", EPOCHS))
        stages.run(f"evaluate {name}", stamp, [run / "eval" / "metrics.json"], lambda: command(
            BIN / "vexkd-train", "eval", "--checkpoint", run / "model.pt", "--dataroot", WORLD, "--split", "val",
            "--out", run / "eval"))
        metrics[name] = json.loads((run / "eval" / "metrics.json").read_text())
        metrics[name]["step_seconds"] = _median_step_seconds(run / "log.csv")

    atomic_write_text(DEMO / "report.md", report(config, stages.seconds, metrics))
    print(f"[demo] report: {DEMO / 'report.md'}")
    return 0


def _median_step_seconds(log: Path) -> float:
    import statistics

    rows = log.read_text().splitlines()[1:]
    return statistics.median(float(row.split(",")[-1]) for row in rows) if rows else float("nan")


def report(config, seconds: dict[str, float], metrics: dict[str, dict]) -> str:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        nusc = NuScenes(config.version, str(WORLD), verbose=False)
    per_class = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    per_class.pop(None, None)
    lines = ["# VeXKD demo report", "", "## Synthetic world", "",
             f"{len(nusc.scene)} scenes ({config.val_scenes} val), {len(nusc.sample)} samples, "
             f"{len(nusc.sample_data)} sensor frames, {len(nusc.sample_annotation)} boxes, written in the nuScenes "
             "schema and read back with nuscenes-devkit.", "",
             "| class | " + " | ".join(sorted(per_class)) + " |", "|---" * (len(per_class) + 1) + "|",
             "| boxes | " + " | ".join(str(per_class[c]) for c in sorted(per_class)) + " |", "",
             "![A val sample: BEV with map layers, LiDAR and GT boxes; the six cameras](sample.png)", "",
             f"## Teacher, baseline and distilled students (val split, {EPOCHS} epochs, `tiny` preset, CPU)", "",
             "| model | mAP | NDS | mIoU | parameters | latency ms (CPU) | train s/step |", "|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['detection']['mAP']:.4f} | {m['detection']['NDS']:.4f} | {m['map']['mIoU']:.4f} | "
                     f"{m['parameters'] / 1e6:.2f} M | {m['latency_ms']['total']:.0f} | {m['step_seconds']:.2f} |")
    lines += ["", "VeXKD distillation (masked BEV feature distillation at both levels, AT distance, masks from "
              "the teacher's fusion query); the student architecture is unchanged:", "",
              "| student | mAP | NDS | mIoU | latency ms |", "|---|---|---|---|---|"]
    for name, baseline in DISTILLED:
        if name in metrics:
            kd, base = metrics[name], metrics[baseline]
            gain = lambda key, group: kd[group][key] - base[group][key]  # noqa: E731
            lines.append(f"| {baseline} + VeXKD | {kd['detection']['mAP']:.4f} ({gain('mAP', 'detection'):+.4f}) | "
                         f"{kd['detection']['NDS']:.4f} ({gain('NDS', 'detection'):+.4f}) | "
                         f"{kd['map']['mIoU']:.4f} ({gain('mIoU', 'map'):+.4f}) | {kd['latency_ms']['total']:.0f} |")
    lines += ["", "Map IoU per class:", "", "| model | " + " | ".join(next(iter(metrics.values()))["map"]["iou"]) + " |",
              "|---" * 7 + "|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in m["map"]["iou"].values()) + " |")
    lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in seconds.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
