"""`make demo`: the user journey on the built-in synthetic world, ending in demo/report.md.

Stages run in dependency order; two that do not depend on each other (the two students,
the two distilled students) run side by side, one thread each. Each stage is reused when
its outputs from an earlier run exist and its fingerprint (a digest of everything it
consumed: arguments, code, the world as it is on disk, the checkpoints it reads) is the one
it ran with, so a re-run only redoes what changed. Everything lands in demo/.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vexkd_core.fingerprint import code_digest, dataset_identity, digest, file_stamp  # noqa: E402
from vexkd_core.io import atomic_write_json, atomic_write_text  # noqa: E402

DEMO = REPO / "demo"
WORLD = DEMO / "world"
RUNS = DEMO / "runs"
BIN = Path(sys.executable).parent
EPOCHS = 15  # the demo schedule: 15 epochs over the 48 train samples, batch 2
TEACHER = RUNS / "teacher" / "model.pt"
MASKS = RUNS / "masks" / "masks.pt"
REPLAY = DEMO / "replay"
PICTURES = ("bev.png", "cameras.jpg", "masks.png", "features.png")
# The students first: the teacher starts its LiDAR branch, decoder and heads from the LiDAR
# one (BEVFusion's practice; without it the short CPU schedule leaves the fusion teacher behind).
# Every model that reads cameras starts its image backbone, neck and depth network from a camera
# student trained on another synthetic world (pretrained/README.md), as camera BEV detectors start
# from a pretrained image network: from scratch, 15 epochs over 48 samples leave the camera
# student too few steps to detect (held-out mAP 0.015 against 0.044 from this start, seeds 0-2).
IMAGE_ENCODER = ["--image-encoder-from", REPO / "pretrained" / "camera_world_seed3.pt"]
STUDENT_RUNS = (("lidar", ["student", "--modality", "lidar"]),
                ("camera", ["student", "--modality", "camera", *IMAGE_ENCODER]))
TEACHER_RUN = ("teacher", ["teacher", "--init-from", RUNS / "lidar" / "model.pt", *IMAGE_ENCODER])
DISTILLED = (("lidar-vexkd", "lidar", []), ("camera-vexkd", "camera", IMAGE_ENCODER))
# The students shown in the pictures (by their label there); the replay runs the distilled two.
STUDENTS = {"LiDAR": RUNS / "lidar" / "model.pt", "LiDAR+VeXKD": RUNS / "lidar-vexkd" / "model.pt",
            "camera": RUNS / "camera" / "model.pt", "camera+VeXKD": RUNS / "camera-vexkd" / "model.pt"}


@dataclass(frozen=True)
class StageTime:
    """One stage of this run: the seconds it took, and whether it was reused instead (then
    `seconds` are those of the earlier run that made its outputs, NaN if unknown)."""

    name: str
    seconds: float
    reused: bool


class Stages:
    """Runs a stage unless an earlier run left its outputs with the same fingerprint.

    `folder`/stamps.json keeps each stage's fingerprint, seconds.json the seconds it took when
    it last ran (shown, marked, for a reused stage); `timings` lists this run's stages."""

    def __init__(self, folder: Path):
        self.stamps_file, self.seconds_file = folder / "stamps.json", folder / "seconds.json"
        self.stamps: dict[str, str] = _read_json(self.stamps_file)
        self.seconds: dict[str, float] = _read_json(self.seconds_file)
        self.timings: list[StageTime] = []
        self._books = threading.Lock()  # stages side by side share the bookkeeping
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Wall-clock seconds since this run began: stages side by side overlap, so their
        seconds add up to more than the run took."""
        return time.monotonic() - self.started

    def run(self, name: str, fingerprint: str, outputs: list[Path], action) -> bool:
        """Runs `action` unless reusable; returns whether it ran."""
        with self._books:
            if self.stamps.get(name) == fingerprint and all(p.exists() for p in outputs):
                print(f"[demo] {name}: reused from an earlier run", flush=True)
                self.timings.append(StageTime(name, self.seconds.get(name, math.nan), reused=True))
                return False
            print(f"[demo] {name} ...", flush=True)
            self.stamps.pop(name, None)  # a stage that fails half way is not reusable
            atomic_write_json(self.stamps_file, self.stamps)
        started = time.monotonic()
        action()
        with self._books:
            self.seconds[name] = time.monotonic() - started
            print(f"[demo] {name}: {self.seconds[name]:.0f} s", flush=True)
            self.stamps[name] = fingerprint
            atomic_write_json(self.stamps_file, self.stamps)
            atomic_write_json(self.seconds_file, self.seconds)
            self.timings.append(StageTime(name, self.seconds[name], reused=False))
        return True

    def run_together(self, jobs: list) -> list:
        """Calls of independent stages (each a function that runs its stages), side by side;
        their results in order. The first failure is raised once all have ended."""
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def command(*arguments, threads: int | None = None) -> None:
    """A tool run to completion; `threads` caps its math libraries' threads (stages that run
    side by side get one core each instead of fighting over both)."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    subprocess.run([str(a) for a in arguments], check=True, env=environment)


def checkpoint(path: Path) -> list:
    """An input file's stamp (vexkd_core.fingerprint.file_stamp), its path relative to demo/."""
    return file_stamp(path, root=DEMO)


def main() -> int:
    from vexkd_core.data.nuscenes_source import open_nuscenes
    from vexkd_core.data.synthetic import demo_config

    config = demo_config(WORLD)
    DEMO.mkdir(exist_ok=True)
    stages = Stages(DEMO)
    # The world stage is keyed by what it is asked to write; what it did write, or what replaced
    # it since (`vexkd-data synth --out demo/world` by hand), is `world` below.
    world_request = digest({k: v for k, v in asdict(config).items() if k != "workers"},
                           code_digest(REPO / "vexkd_core" / "data" / "synthetic"))
    stages.run("synthetic world", world_request, [WORLD / config.version / "sample.json"], lambda: command(
        BIN / "vexkd-data", "synth", "--out", WORLD, "--scenes", config.scenes, "--val-scenes", config.val_scenes,
        "--samples-per-scene", config.samples_per_scene, "--sweeps", config.sweeps,
        "--camera-sweeps", config.camera_sweeps, "--image-size", "x".join(map(str, config.image_size)),
        "--seed", config.seed, "--version", config.version, "--workers", config.workers, "--overwrite"))
    # Every stage below reads the world, so each has its on-disk identity in its fingerprint.
    world = dataset_identity(WORLD, config.version)
    nusc = open_nuscenes(WORLD, config.version)
    scene = val_scenes(nusc)[0]
    render_inputs = digest(world, scene["first_sample_token"], code_digest(REPO / "vexkd_core" / "data"))
    stages.run("render a val sample", render_inputs, [DEMO / "sample.png"], lambda: command(
        BIN / "vexkd-data", "render", "--dataroot", WORLD, "--version", config.version,
        "--sample", scene["first_sample_token"], "--out", DEMO / "sample.png"))

    model_code = digest(code_digest(REPO / "vexkd_core", REPO / "vexkd_train"), EPOCHS)
    def side_by_side(runs: list) -> dict[str, dict]:
        """Independent (name, arguments) trainings at once, one core each; name -> metrics."""
        jobs = [lambda run=run: train_and_evaluate(stages, world, model_code, *run, threads=1) for run in runs]
        return dict(zip([name for name, _ in runs], stages.run_together(jobs)))

    metrics = side_by_side(STUDENT_RUNS)
    metrics[TEACHER_RUN[0]] = train_and_evaluate(stages, world, model_code, *TEACHER_RUN)
    mask_arguments = ["masks", "--teacher", TEACHER, "--dataroot", WORLD, "--out", MASKS.parent]
    stages.run("train mask generators", digest(world, model_code, mask_arguments, checkpoint(TEACHER)), [MASKS],
               lambda: command(BIN / "vexkd-train", *mask_arguments))
    metrics.update(side_by_side([(name, ["student", "--modality", modality, "--teacher", TEACHER, "--masks", MASKS,
                                         "--distill", "vexkd", *start]) for name, modality, start in DISTILLED]))

    replay_summary = replay(config, stages, world, scene["name"])
    pictures_inputs = digest(world, code_digest(REPO / "vexkd_ros" / "replay_pictures.py",
                                                REPO / "vexkd_train" / "pictures.py"),
                             [checkpoint(path) for path in (REPLAY / "outputs", TEACHER, MASKS, *STUDENTS.values())])
    stages.run("pictures", pictures_inputs, [DEMO / name for name in PICTURES], lambda: pictures(config))
    atomic_write_text(DEMO / "report.md", report(config, nusc, stages, metrics, replay_summary))
    print(f"[demo] report: {DEMO / 'report.md'}")
    return 0


def val_scenes(nusc) -> list[dict]:
    """The val scenes of the world as it is on disk, by name; the demo renders and replays the first."""
    from vexkd_core.data.nuscenes_source import split_scene_names

    names = set(split_scene_names(nusc, "val"))
    return sorted((s for s in nusc.scene if s["name"] in names), key=lambda s: s["name"])


def train_and_evaluate(stages: Stages, world: str, code: str, name: str, arguments: list,
                       threads: int | None = None) -> dict:
    """`vexkd-train <arguments>` into runs/<name>, then its val metrics. The checkpoints among the
    arguments (Paths) are inputs: retraining one re-runs this, as does a new world or code."""
    run = RUNS / name
    inputs = [checkpoint(argument) for argument in arguments if isinstance(argument, Path)]
    stages.run(f"train {name}", digest(world, code, arguments, inputs), [run / "model.pt"], lambda: command(
        BIN / "vexkd-train", *arguments, "--dataroot", WORLD, "--config", "tiny", "--out", run,
        "--max-epochs", EPOCHS, threads=threads))
    stages.run(f"evaluate {name}", digest(world, code, checkpoint(run / "model.pt")),
               [run / "eval" / "metrics.json"], lambda: command(
        BIN / "vexkd-train", "eval", "--checkpoint", run / "model.pt", "--dataroot", WORLD, "--split", "val",
        "--out", run / "eval", threads=threads))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["step_seconds"] = _median_step_seconds(run / "log.csv")
    return metrics


def replay(config, stages: Stages, world: str, scene: str) -> str:
    """One val scene to a bag, replayed through the LiDAR and camera students (separate processes)."""
    bag = DEMO / "bags" / scene
    ros_code = code_digest(REPO / "vexkd_ros")

    def write_bag() -> None:
        shutil.rmtree(bag, ignore_errors=True)
        command(BIN / "vexkd-ros", "nuscenes-to-bag", "--dataroot", WORLD, "--version", config.version,
                "--scene", scene, "--out", bag.parent)

    stages.run("scene to a bag", digest(world, ros_code, scene), [bag], write_bag)
    outputs, summary = REPLAY / "outputs", REPLAY / "summary.txt"

    def run_stack() -> None:
        shutil.rmtree(outputs, ignore_errors=True)
        REPLAY.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([str(BIN / "vexkd-ros"), "stack", "--bag", str(bag), "--checkpoint",
                                 str(STUDENTS["LiDAR+VeXKD"]), str(STUDENTS["camera+VeXKD"]),
                                 "--record", str(outputs)], check=True, capture_output=True, text=True)
        print(result.stdout, end="")
        atomic_write_text(summary, result.stdout)

    students = [checkpoint(STUDENTS[label]) for label in ("LiDAR+VeXKD", "camera+VeXKD")]
    stages.run("replay through the stack", digest(world, ros_code, checkpoint(bag), students),
               [outputs, summary], run_stack)
    return summary.read_text()


def pictures(config) -> None:
    from vexkd_ros.replay_pictures import replay_pictures
    from vexkd_train.pictures import write_distillation_pictures

    replay_pictures(WORLD, config.version, REPLAY / "outputs", DEMO)
    write_distillation_pictures(WORLD, config.version, TEACHER, MASKS, STUDENTS, DEMO)


def _median_step_seconds(log: Path) -> float:
    import statistics

    rows = log.read_text().splitlines()[1:]
    return statistics.median(float(row.split(",")[-1]) for row in rows) if rows else float("nan")


def report(config, nusc, stages: Stages, metrics: dict[str, dict], replay_summary: str) -> str:
    """The report on the world as it is on disk (`nusc`), whatever config asked for."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    from vexkd_core.classes import DETECTION_CLASSES
    from vexkd_core.data.nuscenes_source import NuScenesSource

    per_class = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    per_class.pop(None, None)
    lines = ["# VeXKD demo report", "", "## Synthetic world", "",
             f"{len(nusc.scene)} scenes ({len(val_scenes(nusc))} val), {len(nusc.sample)} samples, "
             f"{len(nusc.sample_data)} sensor frames, {len(nusc.sample_annotation)} boxes, written in the nuScenes "
             "schema and read back with nuscenes-devkit.", "",
             "| class | " + " | ".join(sorted(per_class)) + " |", "|---" * (len(per_class) + 1) + "|",
             "| boxes | " + " | ".join(str(per_class[c]) for c in sorted(per_class)) + " |", "",
             "![A val sample: BEV with map layers, LiDAR and GT boxes; the six cameras](sample.png)", "",
             f"## Teacher, baseline and distilled students (val split, {EPOCHS} epochs, `tiny` preset, CPU)", "",
             "The camera student, its distilled twin and the teacher's camera branch start their image backbone, "
             "neck and depth network from a camera student trained on another synthetic world "
             "(`--image-encoder-from pretrained/camera_world_seed3.pt`, see pretrained/README.md); everything "
             "else starts from random weights (the teacher's LiDAR branch, decoder and heads from the LiDAR "
             "student).", "",
             "| model | mAP | NDS | mIoU | parameters | latency ms (CPU) | train s/step |", "|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['detection']['mAP']:.4f} | {m['detection']['NDS']:.4f} | {m['map']['mIoU']:.4f} | "
                     f"{m['parameters'] / 1e6:.2f} M | {m['latency_ms']['total']:.0f} | {m['step_seconds']:.2f} |")
    lines += ["", "VeXKD distillation (masked BEV feature distillation at both levels, AT distance, masks from "
              "the teacher's fusion query); the student architecture is unchanged:", "",
              "| student | mAP | NDS | mIoU | latency ms |", "|---|---|---|---|---|"]
    for name, baseline, _ in DISTILLED:
        if name in metrics:
            kd, base = metrics[name], metrics[baseline]
            gain = lambda key, group: kd[group][key] - base[group][key]  # noqa: E731
            lines.append(f"| {baseline} + VeXKD | {kd['detection']['mAP']:.4f} ({gain('mAP', 'detection'):+.4f}) | "
                         f"{kd['detection']['NDS']:.4f} ({gain('NDS', 'detection'):+.4f}) | "
                         f"{kd['map']['mIoU']:.4f} ({gain('mIoU', 'map'):+.4f}) | {kd['latency_ms']['total']:.0f} |")
    lines += ["", "These figures are **one seed**. Across three seeds of the paper suite a student's mAP moves by "
              "0.01-0.025 (standard deviation) and a distillation gain by up to 0.04, and training is not "
              "bit-for-bit the same on another CPU (floating-point order): read differences under about 0.04 "
              "mAP as noise (docs/results.md, \"How much the figures move\").",
              "", "Map IoU per class:", "", "| model | " + " | ".join(next(iter(metrics.values()))["map"]["iou"]) + " |",
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
              "How selective the generated masks are on the val split (`vexkd-train masks` prints and stores "
              "this; a uniform mask, of any value, would be whole-map distillation):", "",
              (MASKS.parent / "selectivity.md").read_text().strip(), "",
              "![Generated masks per task (detection, segmentation) and level (low, high), first val sample, "
              "on one 0..1 colour scale](masks.png)", "",
              "![Student BEV features (attention maps) before and after distillation, next to the teacher's]"
              "(features.png)", "",
              "## Replay through ROS 2", "",
              "A val scene written to a rosbag2 (`vexkd-ros nuscenes-to-bag`) and replayed at its own timing "
              "through the distilled LiDAR and camera students, each a separate process (`vexkd-ros stack`), "
              "outputs recorded to `demo/replay/outputs`:", "", "```", replay_summary.strip(), "```", "",
              "Last key frame answered by both nodes, boxes with score >= 0.3 (ground truth in white, "
              "predicted map classes tinted):", "", "![BEV: LiDAR and camera students vs ground truth](bev.png)", "",
              "![The six cameras with the LiDAR student's boxes projected](cameras.jpg)", ""]
    lines += timings_table(stages.timings, stages.elapsed())
    return "\n".join(lines) + "\n"


def timings_table(timings: list[StageTime], wall_seconds: float) -> list[str]:
    """This run's stages; the total is the wall-clock time this run spent: reused stages show,
    in brackets, the seconds the earlier run that made their outputs took, and are not in it."""
    lines = ["", "## Stage timings", "", "Seconds each stage took in this run (2-core CPU; the two students, and "
             "the two distilled students, train side by side on one core each). A reused stage did not run: its "
             "seconds, in brackets, are those of the earlier run that made its outputs, and are not in the total, "
             "which is this run's wall-clock time (setup not included).", "", "| stage | seconds | |",
             "|---|---|---|"]
    lines += [f"| {t.name} | ({t.seconds:.0f}) | reused |" if t.reused else f"| {t.name} | {t.seconds:.0f} | |"
              for t in timings]
    reused = sum(t.reused for t in timings)
    lines.append(f"| total (this run, wall clock) | {wall_seconds:.0f} | {reused} of {len(timings)} reused |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
