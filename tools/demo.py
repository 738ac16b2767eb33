"""`make demo`: the user journey on the built-in synthetic world, ending in demo/report.md.

Stages run in order; each is skipped when its output from an earlier run is still valid
(its inputs unchanged), so a re-run only redoes what changed. Everything lands in demo/.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
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
REPLAY = DEMO / "replay"
PICTURES = ("bev.png", "cameras.jpg", "masks.png", "features.png")
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
        # Seconds each stage took when it last ran, so a re-run's report still shows them.
        self.seconds_file = folder / "seconds.json"
        self.seconds: dict[str, float] = json.loads(self.seconds_file.read_text()) if self.seconds_file.is_file() \
            else {}
        self.reused: set[str] = set()

    def run(self, name: str, stamp: str, outputs: list[Path], action) -> None:
        if self.stamps.get(name) == stamp and all(p.exists() for p in outputs):
            print(f"[demo] {name}: reused from an earlier run", flush=True)
            self.reused.add(name)
            return
        print(f"[demo] {name} ...", flush=True)
        started = time.monotonic()
        action()
        self.seconds[name] = time.monotonic() - started
        print(f"[demo] {name}: {self.seconds[name]:.0f} s", flush=True)
        from vexkd_core.io import atomic_write_json

        self.stamps[name] = stamp
        atomic_write_json(self.stamps_file, self.stamps)
        atomic_write_json(self.seconds_file, self.seconds)


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
        "--seed", config.seed, "--version", config.version, "--workers", config.workers, "--overwrite"))
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

    replay_summary = replay(config, stages, world_stamp)
    pictures_stamp = digest(stages.stamps["replay through the stack"], stages.stamps["train mask generators"],
                            REPO / "vexkd_ros" / "replay_pictures.py", REPO / "vexkd_train" / "pictures.py")
    stages.run("pictures", pictures_stamp, [DEMO / name for name in PICTURES], lambda: pictures(config))
    atomic_write_text(DEMO / "report.md", report(config, stages, metrics, replay_summary))
    print(f"[demo] report: {DEMO / 'report.md'}")
    return 0


def replay(config, stages: Stages, world_stamp: str) -> str:
    """One val scene to a bag, replayed through the LiDAR and camera students (separate processes)."""
    from vexkd_core.data.nuscenes_source import open_nuscenes, split_scene_names

    nusc = open_nuscenes(WORLD, config.version)
    scene = sorted(set(split_scene_names(nusc, "val")) & {s["name"] for s in nusc.scene})[0]
    bag = DEMO / "bags" / scene
    ros_code = digest(REPO / "vexkd_ros")

    def write_bag() -> None:
        shutil.rmtree(bag, ignore_errors=True)
        command(BIN / "vexkd-ros", "nuscenes-to-bag", "--dataroot", WORLD, "--version", config.version,
                "--scene", scene, "--out", bag.parent)

    stages.run("scene to a bag", digest(world_stamp, ros_code), [bag], write_bag)
    outputs, summary = REPLAY / "outputs", REPLAY / "summary.txt"

    def run_stack() -> None:
        shutil.rmtree(outputs, ignore_errors=True)
        REPLAY.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([str(BIN / "vexkd-ros"), "stack", "--bag", str(bag), "--checkpoint",
                                 str(RUNS / "lidar-vexkd" / "model.pt"), str(RUNS / "camera-vexkd" / "model.pt"),
                                 "--record", str(outputs)], check=True, capture_output=True, text=True)
        print(result.stdout, end="")
        from vexkd_core.io import atomic_write_text

        atomic_write_text(summary, result.stdout)

    stages.run("replay through the stack", digest(stages.stamps["scene to a bag"], ros_code,
                                                  stages.stamps["train lidar-vexkd"], stages.stamps["train camera-vexkd"]),
               [outputs, summary], run_stack)
    return summary.read_text()


def pictures(config) -> None:
    from vexkd_ros.replay_pictures import replay_pictures
    from vexkd_train.pictures import write_distillation_pictures

    replay_pictures(WORLD, config.version, REPLAY / "outputs", DEMO)
    write_distillation_pictures(WORLD, config.version, TEACHER, MASKS,
                                {"LiDAR": RUNS / "lidar" / "model.pt", "LiDAR+VeXKD": RUNS / "lidar-vexkd" / "model.pt",
                                 "camera": RUNS / "camera" / "model.pt",
                                 "camera+VeXKD": RUNS / "camera-vexkd" / "model.pt"}, DEMO)


def _median_step_seconds(log: Path) -> float:
    import statistics

    rows = log.read_text().splitlines()[1:]
    return statistics.median(float(row.split(",")[-1]) for row in rows) if rows else float("nan")


def report(config, stages: Stages, metrics: dict[str, dict], replay_summary: str) -> str:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    from vexkd_core.classes import DETECTION_CLASSES
    from vexkd_core.data.nuscenes_source import NuScenesSource

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
    val_objects = NuScenesSource(WORLD, config.version, "val", 0, nusc=nusc).objects_per_class()
    lines += ["", "Detection AP per class (mAP is their mean; a class with a handful of val objects moves it on "
              "its own):", "", "| model | " + " | ".join(DETECTION_CLASSES) + " |", "|---" * 11 + "|",
              "| val objects | " + " | ".join(str(val_objects[name]) for name in DETECTION_CLASSES) + " |"]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{m['detection']['per_class_ap'][c]:.2f}" for c in DETECTION_CLASSES)
                     + " |")
    lines += ["", "## Distillation, seen", "",
              "![Generated masks per task (detection, segmentation) and level (low, high), first val sample]"
              "(masks.png)", "",
              "![Student BEV features (attention maps) before and after distillation, next to the teacher's]"
              "(features.png)", "",
              "## Replay through ROS 2", "",
              "A val scene written to a rosbag2 (`vexkd-ros nuscenes-to-bag`) and replayed at its own timing "
              "through the distilled LiDAR and camera students, each a separate process (`vexkd-ros stack`), "
              "outputs recorded to `demo/replay/outputs`:", "", "```", replay_summary.strip(), "```", "",
              "Last key frame answered by both nodes, boxes with score >= 0.3 (ground truth in white, "
              "predicted map classes tinted):", "", "![BEV: LiDAR and camera students vs ground truth](bev.png)", "",
              "![The six cameras with the LiDAR student's boxes projected](cameras.jpg)", ""]
    lines += ["", "## Stage timings", "", "Seconds each stage took when it last ran (2-core CPU); "
              "stages this run reused are marked.", "", "| stage | seconds | |", "|---|---|---|"]
    lines += [f"| {name} | {stages.seconds.get(name, float('nan')):.0f} | {'reused' if name in stages.reused else ''} |"
              for name in stages.stamps]
    lines.append(f"| total | {sum(stages.seconds.get(name, 0.0) for name in stages.stamps):.0f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
