"""`make demo`: the user journey on the built-in synthetic world, ending in demo/report.md.

A world is written and one of its samples rendered; the `DEMO` suite of the experiment runner
trains the LiDAR and camera students (side by side, one core each), the teacher from the LiDAR
one, the mask generators and the two distilled students (side by side), and evaluates each;
a val scene goes to a rosbag2 and is replayed through the distilled students' nodes. Every step
is a stage (vexkd_train.stages): a re-run redoes only what changed (arguments, code, the world
as it is on disk, the checkpoints a step reads). Everything lands in demo/.

    python -m vexkd_train.demo [--out demo]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from vexkd_core.config import load_config
from vexkd_core.fingerprint import code_digest, dataset_identity, file_stamp
from vexkd_core.io import atomic_write_text
from vexkd_train.experiment import Experiment
from vexkd_train.experiment_plan import PACKAGE, PRETRAINED_IMAGE_STAGES, MaskRun, Student, Suite
from vexkd_train.stages import Stages, timings_table

BIN = Path(sys.executable).parent
# Every model that reads cameras starts its image backbone, neck and depth network from a camera
# student trained on another synthetic world (pretrained/README.md), as camera BEV detectors start
# from a pretrained image network: from scratch, 15 epochs over 48 samples leave the camera
# student too few steps to detect (held-out mAP 0.015 against 0.044 from this start, seeds 0-2).
# The teacher starts its LiDAR branch, decoder and heads from the LiDAR student (BEVFusion's
# practice; without it the short CPU schedule leaves the fusion teacher behind).
DEMO = Suite(epochs=15, mask_epochs=None, seeds=(0,), tables=("comparison",),
             image_encoder_from=PRETRAINED_IMAGE_STAGES, training_split=False,
             redo_on_code_change=True, short_names=True)
REPLAYED = (Student("lidar", "vexkd"), Student("camera", "vexkd"))  # the students whose nodes replay the bag
REPLAY_PICTURES = ("bev.png", "cameras.jpg")


def run_names() -> set[str]:
    """The folders under demo/runs/."""
    from vexkd_train.experiment_plan import tables

    students = {student for rows in tables(DEMO.seeds, names=DEMO.tables).values() for _, student in rows}
    return {student.short_name for student in students} | {"teacher", MaskRun.short_name}


def command(*arguments) -> None:
    subprocess.run([str(a) for a in arguments], check=True)


def main(argv: list[str] | None = None) -> int:
    from vexkd_core.data.nuscenes_source import open_nuscenes
    from vexkd_core.data.synthetic import demo_config

    parser = argparse.ArgumentParser(prog="python -m vexkd_train.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="where everything lands (default: demo)")
    out = parser.parse_args(argv).out.resolve()
    world = out / "world"
    config = demo_config(world)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out / "stages")
    # The world stage is keyed by what it is asked to write; what it did write, or what replaced
    # it since (`vexkd-data synth --out demo/world` by hand), is the world's identity below.
    request = {"world": {k: v for k, v in asdict(config).items() if k not in ("out", "workers")},
               "code": code_digest(PACKAGE / "vexkd_core" / "data" / "synthetic")}
    stages.run("synthetic world", request, [world / config.version / "sample.json"], lambda: command(
        BIN / "vexkd-data", "synth", "--out", world, "--scenes", config.scenes, "--val-scenes", config.val_scenes,
        "--samples-per-scene", config.samples_per_scene, "--sweeps", config.sweeps,
        "--camera-sweeps", config.camera_sweeps, "--image-size", "x".join(map(str, config.image_size)),
        "--seed", config.seed, "--version", config.version, "--workers", config.workers, "--overwrite"))
    identity = dataset_identity(world, config.version)
    nusc = open_nuscenes(world, config.version)
    scene = val_scenes(nusc)[0]
    stages.run("render a val sample", {"data": identity, "sample": scene["first_sample_token"],
                                       "code": code_digest(PACKAGE / "vexkd_core" / "data")},
               [out / "sample.png"], lambda: command(
        BIN / "vexkd-data", "render", "--dataroot", world, "--version", config.version,
        "--sample", scene["first_sample_token"], "--out", out / "sample.png"))

    experiment = Experiment(world, config.version, out, load_config("tiny"), DEMO, stages=stages)
    results = experiment.run(jobs=2)
    runs = experiment.runs
    students = [runs.checkpoint(runs.name(student)) for student in REPLAYED]
    replay_summary = replay(stages, out, world, config.version, identity, scene["name"], students)

    def replay_pictures() -> None:
        from vexkd_ros.replay_pictures import replay_pictures as draw

        draw(world, config.version, out / "replay" / "outputs", out)

    stages.run("replay pictures", {"data": identity, "outputs": file_stamp(out / "replay" / "outputs", out),
                                   "code": code_digest(PACKAGE / "vexkd_ros" / "replay_pictures.py")},
               [out / name for name in REPLAY_PICTURES], replay_pictures)
    atomic_write_text(out / "report.md", report(nusc, results, replay_summary, stages))
    print(f"[demo] report: {out / 'report.md'}")
    return 0


def val_scenes(nusc) -> list[dict]:
    """The val scenes of the world as it is on disk, by name; the demo renders and replays the first."""
    from vexkd_core.data.nuscenes_source import split_scene_names

    names = set(split_scene_names(nusc, "val"))
    return sorted((s for s in nusc.scene if s["name"] in names), key=lambda s: s["name"])


def replay(stages: Stages, out: Path, world: Path, version: str, identity: str, scene: str,
           students: list[Path]) -> str:
    """One val scene to a bag, replayed through the students' nodes (a process each)."""
    bag, outputs, summary = out / "bags" / scene, out / "replay" / "outputs", out / "replay" / "summary.txt"
    ros_code = code_digest(PACKAGE / "vexkd_ros", PACKAGE / "vexkd_core" / "runtime")

    def write_bag() -> None:
        shutil.rmtree(bag, ignore_errors=True)
        command(BIN / "vexkd-ros", "nuscenes-to-bag", "--dataroot", world, "--version", version, "--scene", scene,
                "--out", bag.parent)

    def run_stack() -> None:
        shutil.rmtree(outputs, ignore_errors=True)
        outputs.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([str(BIN / "vexkd-ros"), "stack", "--bag", str(bag), "--checkpoint",
                                 *map(str, students), "--record", str(outputs)], check=True, capture_output=True,
                                text=True)
        print(result.stdout, end="")
        atomic_write_text(summary, result.stdout)

    stages.run("scene to a bag", {"data": identity, "scene": scene, "code": ros_code}, [bag], write_bag)
    stages.run("replay through the stack", {"bag": file_stamp(bag, out), "code": ros_code,
                                            "students": [file_stamp(path, out) for path in students]},
               [outputs, summary], run_stack)
    return summary.read_text()


def report(nusc, results: dict, replay_summary: str, stages: Stages) -> str:
    """The report on the world as it is on disk (`nusc`); its tables are the experiment report's."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    from vexkd_train.experiment_report import sections

    per_class = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    per_class.pop(None, None)
    lines = ["# VeXKD demo report", "", "## Synthetic world", "",
             f"{len(nusc.scene)} scenes ({len(val_scenes(nusc))} val), {len(nusc.sample)} samples, "
             f"{len(nusc.sample_data)} sensor frames, {len(nusc.sample_annotation)} boxes, written in the nuScenes "
             "schema and read back with nuscenes-devkit.", "",
             "| class | " + " | ".join(sorted(per_class)) + " |", "|---" * (len(per_class) + 1) + "|",
             "| boxes | " + " | ".join(str(per_class[c]) for c in sorted(per_class)) + " |", "",
             "![A val sample: BEV with map layers, LiDAR and GT boxes; the six cameras](sample.png)", "",
             f"## Teacher, baseline and distilled students (val split, {DEMO.epochs} epochs, `tiny` preset, CPU)",
             "", "The camera student, its distilled twin and the teacher's camera branch start their image "
             "backbone, neck and depth network from a camera student trained on another synthetic world "
             "(`--image-encoder-from pretrained/camera_world_seed3.pt`, see pretrained/README.md); everything "
             "else starts from random weights (the teacher's LiDAR branch, decoder and heads from the LiDAR "
             "student). VeXKD distillation: masked BEV feature distillation at both levels, AT distance, masks "
             "from the teacher's fusion query; the student architecture is unchanged. Runs, logs and "
             "evaluations are in `runs/<name>/`.", "", *sections(results),
             "## Replay through ROS 2", "",
             "A val scene written to a rosbag2 (`vexkd-ros nuscenes-to-bag`) and replayed at its own timing "
             "through the distilled LiDAR and camera students, each a separate process (`vexkd-ros stack`), "
             "outputs recorded to `demo/replay/outputs`:", "", "```", replay_summary.strip(), "```", "",
             "Last key frame answered by both nodes, boxes with score >= 0.3 (ground truth in white, "
             "predicted map classes tinted):", "", "![BEV: LiDAR and camera students vs ground truth](bev.png)", "",
             "![The six cameras with the LiDAR student's boxes projected](cameras.jpg)", ""]
    lines += timings_table(stages.timings, stages.elapsed())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
