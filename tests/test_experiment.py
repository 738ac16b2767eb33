"""The `quick` experiment suite runs every table of the paper end to end (students side by side), and a re-run
reuses every finished run; a run is redone when its dataset is rewritten or a checkpoint
it started from is retrained."""
import json

import pytest

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_train.experiment import run_experiment
from vexkd_train.experiment_plan import tables
from vexkd_train.experiment_report import markdown, summarise

pytestmark = pytest.mark.slow


def test_quick_suite_end_to_end_then_resumes_without_retraining(tiny_world, tmp_path):
    dataroot, world = tiny_world
    # The tiny world doubles as the "held-out" world: its val metrics must then come out again.
    # Students train two side by side here; the re-run below, one process, must find them all finished.
    results = run_experiment(dataroot, world.version, tmp_path, "quick", progress=False, heldout=dataroot, jobs=2)
    assert set(results["tables"]) == {"comparison", "components", "masks", "blocks", "distance", "fusers", "camera"}
    # Rows are compared with the row holding their own baseline student, whatever their labels.
    assert {label: entry["baseline"] for label, entry in results["tables"]["camera"].items()} == {
        "camera student": None, "camera student + VeXKD": "camera student",
        "camera student without depth supervision": None,
        "camera student without depth supervision + VeXKD": "camera student without depth supervision"}
    assert {entry["baseline"] for entry in results["tables"]["blocks"].values()} == {None}
    assert results["tables"]["masks"]["whole map"]["baseline"] == "no FD"
    # Depth supervision is a training loss of the one row and not of the other.
    logged = {name: (tmp_path / "runs" / name / "log.csv").read_text().splitlines()[0].split(",")
              for name in ("camera-baseline-s0", "camera-nodepth-baseline-s0")}
    assert "depth" in logged["camera-baseline-s0"] and "depth" not in logged["camera-nodepth-baseline-s0"]
    assert len(results["tables"]["masks"]) == 7 and len(results["tables"]["blocks"]) == 4
    assert list(results["tables"]["fusers"]) == [
        "LiDAR student", "camera student", "LiDAR student + MGFM teacher (whole-map FD)",
        "LiDAR student + ConvFuser teacher (whole-map FD)", "camera student + MGFM teacher (whole-map FD)",
        "camera student + ConvFuser teacher (whole-map FD)"]
    # Each teacher with both sensors, LiDAR only, camera only; "both" is its val evaluation.
    robustness = results["robustness"]
    assert {fuser: list(cases) for fuser, cases in robustness.items()} == {
        "MGFM": ["both", "LiDAR only", "camera only"], "ConvFuser": ["both", "LiDAR only", "camera only"]}
    assert robustness["MGFM"]["both"]["mAP"]["values"] == results["teacher"]["mAP"]["values"]
    without_camera = json.loads((tmp_path / "runs" / "teacher-convfuser" / "val_without_camera.json").read_text())
    assert without_camera["drop_sensor"] == "camera"
    # The selectivity report of the generators the mask-choice table uses, per mask.
    assert set(results["selectivity"]) == {"fusion query (VeXKD)", "random query"}
    assert len(results["selectivity"]["fusion query (VeXKD)"]["detection/low"]) == 6
    # How alike the two generators' masks are: the query ablation means something only if they differ.
    agreement = results["mask_agreement"]
    assert set(agreement) == set(results["selectivity"]["random query"])
    assert all(0.0 <= value <= 1.0 for values in agreement.values() for value in values.values())
    for table in results["tables"].values():
        for entry in table.values():
            assert 0.0 <= entry["NDS"]["mean"] <= 1.0 and 0.0 <= entry["mIoU"]["mean"] <= 1.0
    # A distilled student is the baseline network: same parameter count.
    comparison = results["tables"]["comparison"]
    assert comparison["LiDAR student + VeXKD"]["parameters"] == comparison["LiDAR student"]["parameters"]
    students = {student.name for rows in tables((0,)).values() for _, student in rows}
    runs = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.json")}
    assert students <= set(runs) and "teacher" in runs
    import cv2

    masks, features = cv2.imread(str(tmp_path / "masks.png")), cv2.imread(str(tmp_path / "features.png"))
    # masks: a row per generator (4); features: a row per level, teacher + 4 students, then a colour bar
    assert masks.shape[0] == 4 * 200 and features.shape[0] == 2 * 200 and 5 * 200 < features.shape[1] < 6 * 200
    assert cv2.imread(str(tmp_path / "robustness.png")).shape == (360, 900, 3)
    # The generalisation check: teacher and comparison rows evaluated on the training split too.
    fitted = results["training_split"]
    assert list(fitted) == ["teacher"] + list(comparison)
    teacher_fit = json.loads((tmp_path / "runs" / "teacher" / "training_split.json").read_text())
    train_samples = (world.scenes - world.val_scenes) * world.samples_per_scene
    assert teacher_fit["split"] == "train" and teacher_fit["samples"] == train_samples
    assert fitted["teacher"]["mAP"]["mean"] == teacher_fit["detection"]["mAP"]
    markdown = (tmp_path / "results.md").read_text()
    assert "## Mask choice (LiDAR student)" in markdown and "generated, fusion query (VeXKD)" in markdown
    assert "## Training split against val (generalisation check)" in markdown
    assert "## Each teacher with a sensor missing (val)" in markdown
    assert "## Mask selectivity on val: generators from the fusion query (VeXKD)" in markdown
    assert "## Fusion-query against random-query masks on val" in markdown
    # Per-class AP: what mAP averages, next to how many val objects each class has.
    val_objects = NuScenesSource(dataroot, world.version, "val", 0).objects_per_class()
    assert results["val_objects"] == val_objects and set(val_objects) == set(DETECTION_CLASSES)
    baseline_run = json.loads((tmp_path / "runs" / "lidar-baseline-s0" / "metrics.json").read_text())
    assert {name: entry["mean"] for name, entry in comparison["LiDAR student"]["per_class_ap"].items()} \
        == baseline_run["detection"]["per_class_ap"]
    assert "| val objects | " + " | ".join(str(val_objects[name]) for name in DETECTION_CLASSES) in markdown
    fit_files = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/training_split.json")}
    assert len(fit_files) == 5
    held = results["heldout"]
    assert set(held["tables"]) == {"comparison", "components", "masks", "camera"}
    assert held["val_objects"] == val_objects
    assert held["teacher"]["mAP"]["values"] == results["teacher"]["mAP"]["values"]
    assert held["tables"]["masks"]["whole map"]["mIoU"] == results["tables"]["masks"]["whole map"]["mIoU"]
    assert f"# Held-out world: val split of {dataroot}" in markdown
    held_files = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/heldout.json")}
    agreement_file = tmp_path / "runs" / "mask-agreement.json"
    agreement_written = agreement_file.stat().st_mtime_ns

    again = run_experiment(dataroot, world.version, tmp_path, "quick", progress=False, heldout=dataroot)
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.json")} == runs
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/training_split.json")} \
        == fit_files
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/heldout.json")} == held_files
    assert agreement_file.stat().st_mtime_ns == agreement_written  # the teacher is not run over val again
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_one_table_runs_alone_with_only_what_it_needs(tiny_world, tmp_path):
    """`experiment --tables study-camera`: the mask study's camera table alone, a detection
    student per row (the study's tables are a model per task in any suite), evaluated on the
    held-out and the test world too; no ConvFuser teacher, no LiDAR student but the teacher's
    start, no pictures of absent students; the study's gains and masks pictures. An unknown
    table is one line."""
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    dataroot, world = tiny_world
    command = [Path(sys.executable).parent / "vexkd-train", "experiment", "--suite", "quick", "--dataroot", dataroot,
               "--out", tmp_path, "--heldout", dataroot, "--test-world", dataroot, "--tables"]
    finished = subprocess.run(command + ["study-camera"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["tables"]) == list(results["heldout"]["tables"]) == list(results["test"]["tables"]) \
        == ["study-camera"]
    rows = results["tables"]["study-camera"]
    assert list(rows) == ["no FD", "whole map", "generated, random query", "generated, fusion query (VeXKD)"]
    assert all(entry["mIoU"] is None and entry["mAP"] is not None for entry in rows.values())
    assert "robustness" not in results and list(results["training_split"]) == ["teacher"]
    runs = {path.name for path in (tmp_path / "runs").iterdir()}
    assert {name for name in runs if name.startswith(("camera", "lidar"))} == {
        "lidar-baseline-s0", "camera-det-baseline-s0", "camera-det-full-low+high-at-b3-s0",
        "camera-det-random-query-low+high-at-b3-s0", "camera-det-vexkd-low+high-at-b3-s0"}
    assert "teacher-convfuser" not in runs
    # The same checkpoints on the test world (here the tiny world again: the same figures).
    assert results["test"]["tables"]["study-camera"]["whole map"]["mAP"]["values"] == rows["whole map"]["mAP"]["values"]
    assert results["test"]["val_samples"] == world.val_scenes * world.samples_per_scene
    markdown = (tmp_path / "results.md").read_text()
    assert "## Mask study: camera student, detection" in markdown and "(masks.png)" not in markdown
    assert "## Camera student (detection): mask choice, test world (1 seed)" in markdown
    # The test world's val split scored in parts of whole scenes (a part per val scene here).
    parts = results["test"]["parts"]
    assert len(parts) == world.val_scenes and all(list(part["tables"]) == ["study-camera"] for part in parts)
    assert all(0 <= part["tables"]["study-camera"]["whole map"]["mAP"]["mean"] <= 1 for part in parts)
    assert "## Evaluation noise inside the test world" in markdown
    assert cv2.imread(str(tmp_path / "study_gains.png")) is not None
    for name in ("learned-b3", "random-b3"):  # a picture per generator set the table used: a row per task and level
        assert cv2.imread(str(tmp_path / f"masks_{name}.png")).shape[0] == 4 * 200
    refused = subprocess.run(command + ["study-camera", "fuser"], capture_output=True, text=True)
    assert refused.returncode == 2 and "not fuser" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_gains_are_paired_seed_by_seed():
    def run(map_, nds, miou):
        return {"detection": {"mAP": map_, "NDS": nds, "per_class_ap": dict.fromkeys(DETECTION_CLASSES, map_)},
                "map": {"mIoU": miou}, "latency_ms": {"total": 50.0}, "parameters": 1000}

    # The distilled student is exactly 0.02 mAP better in each seed, while the seeds differ by 0.05.
    baseline = summarise([run(0.20, 0.30, 0.20), run(0.25, 0.30, 0.24)])
    distilled = summarise([run(0.22, 0.30, 0.20), run(0.27, 0.30, 0.20)])
    results = {"teacher": summarise([run(0.3, 0.3, 0.3)]),
               "tables": {"comparison": {"LiDAR student": {**baseline, "baseline": None},
                                         "LiDAR student + VeXKD": {**distilled, "baseline": "LiDAR student"}}},
               "training_split": {"teacher": summarise([run(0.5, 0.4, 0.4)])},
               "val_objects": dict.fromkeys(DETECTION_CLASSES, 3)}
    row = next(line for line in markdown(results).splitlines() if line.startswith("| LiDAR student + VeXKD"))
    assert "0.2450 +- 0.0250 (+0.0200 +- 0.0000)" in row  # mAP: paired gain has no spread
    assert "0.2000 +- 0.0000 (-0.0200 +- 0.0200)" in row  # mIoU: gains 0.00 and -0.04


def test_ablation_tables_can_run_fewer_seeds():
    chosen = tables((0, 1, 2), ablation_seeds=(0,))
    seeds = {table: {student.seed for _, student in rows} for table, rows in chosen.items()}
    assert seeds == {"comparison": {0, 1, 2}, "components": {0, 1, 2}, "masks": {0, 1, 2},
                     "blocks": {0}, "distance": {0}, "fusers": {0, 1, 2}, "camera": {0, 1, 2}}
    assert tables((0, 1))["blocks"] == tables((0, 1), ablation_seeds=(0, 1))["blocks"]


# A world small enough to write twice in a test (seconds each).
SMALL_WORLD = dict(scenes=2, val_scenes=1, samples_per_scene=2, sweeps=1, camera_sweeps=1, image_size=(64, 36),
                   workers=1)


def _write_world(out, seed):
    from vexkd_core.data.synthetic import SynthConfig, write_dataset

    config = SynthConfig(out=out, seed=seed, **SMALL_WORLD)
    write_dataset(config, progress=False)
    return config


def _runs(dataroot, version, out):
    from vexkd_core.config import load_config
    from vexkd_train.experiment_plan import SUITES
    from vexkd_train.experiment_runs import Runs

    return Runs(dataroot, version, out, load_config("tiny"), SUITES["quick"], progress=False)


def _finish_by_hand(runs, name: str, spec: dict, checkpoint: bytes):
    """What a finished training leaves, without the training: its checkpoint and stage record."""
    from vexkd_core.io import atomic_write_bytes

    path = runs.checkpoint(name)
    runs.stages.run(f"train {name}", spec, [path], lambda: atomic_write_bytes(path, checkpoint))


def _stand_in_evaluation(monkeypatch) -> list:
    """Evaluations that ran (not read from their <tag>.json): each a stand-in returning {}."""
    from vexkd_train import experiment_runs

    evaluations = []
    monkeypatch.setattr(experiment_runs, "evaluate", lambda *arguments, **_: evaluations.append(arguments) or {})
    return evaluations


def test_a_run_is_redone_when_its_dataset_is_rewritten(tmp_path, monkeypatch):
    import shutil

    from vexkd_train.experiment_plan import Student

    evaluations = _stand_in_evaluation(monkeypatch)
    world = tmp_path / "world"
    version = _write_world(world, seed=1).version
    student = Student("lidar")
    first = _runs(world, version, tmp_path / "out")
    spec = first.student_spec(student)
    _finish_by_hand(first, student.name, spec, b"lidar")
    first.evaluation(student.name, world, "train", "training_split")
    again = _runs(world, version, tmp_path / "out")  # a later run, nothing changed
    checkpoint = [again.checkpoint(student.name)]
    assert again.student_spec(student) == spec and again.stages.is_done(f"train {student.name}", spec, checkpoint)
    again.evaluation(student.name, world, "train", "training_split")
    assert len(evaluations) == 1

    _write_world(tmp_path / "new", seed=2)  # `vexkd-data synth` again: a new world moved into place
    shutil.rmtree(world)
    (tmp_path / "new").rename(world)
    rewritten = _runs(world, version, tmp_path / "out")
    new_spec = rewritten.student_spec(student)
    assert new_spec != spec and not rewritten.stages.is_done(f"train {student.name}", new_spec, checkpoint)
    rewritten.evaluation(student.name, world, "train", "training_split")  # the same checkpoint: the data changed
    assert len(evaluations) == 2


def test_a_distilled_run_is_redone_when_its_teacher_is_retrained(tiny_world, tmp_path, monkeypatch):
    from vexkd_train.experiment_plan import Student

    _stand_in_evaluation(monkeypatch)
    dataroot, world = tiny_world
    runs = _runs(dataroot, world.version, tmp_path)
    baseline = Student("lidar")
    _finish_by_hand(runs, baseline.name, runs.student_spec(baseline), b"lidar")
    _finish_by_hand(runs, "teacher", runs.teacher_spec(), b"teacher")
    distilled = Student("lidar", "full", ("low",))
    spec = runs.student_spec(distilled)  # finds the teacher finished: nothing trains
    assert spec["inputs"]["teacher"][0] == "runs/teacher/model.pt"
    assert _runs(dataroot, world.version, tmp_path).student_spec(distilled) == spec

    runs.checkpoint("teacher").write_bytes(b"retrained")
    assert runs.student_spec(distilled) != spec
    # The same holds one step up: a retrained LiDAR baseline is a new start for the teacher.
    teacher_spec = runs.teacher_spec()
    runs.checkpoint(baseline.name).write_bytes(b"lidar, retrained")
    assert runs.teacher_spec() != teacher_spec


def test_the_studys_controls_and_the_fused_map_query_train(tiny_world, tmp_path):
    """A LiDAR-only teacher trained as long as the teacher from the seed-0 LiDAR student (the
    self-distillation control), a teacher from a seed no student uses with its fused-map mask
    generators, and per-task students distilled from each."""
    import torch

    from vexkd_core.checkpoint import load_checkpoint
    from vexkd_core.config import load_config
    from vexkd_train.experiment_plan import UNUSED_SEED, MaskRun, Student, Suite, Teacher
    from vexkd_train.experiment_runs import Runs

    dataroot, world = tiny_world
    suite = Suite(epochs=1, mask_epochs=1, seeds=(0,), max_steps=2)
    runs = Runs(dataroot, world.version, tmp_path, load_config("tiny"), suite, progress=False)
    self_distilled = Student("lidar", "full", fuser="none", tasks="map")
    assert runs.student(self_distilled)["detection"] is None
    teacher = load_checkpoint(runs.teacher(Teacher("none")))
    assert teacher["modality"] == "lidar"  # trained on from the LiDAR student, no camera
    start = load_checkpoint(runs.checkpoint("lidar-baseline-s0"))["model"]
    assert any(not torch.equal(start[key], value) for key, value in teacher["model"].items())
    fused = Student("lidar", "fused-query", tasks="detection", teacher_seed=UNUSED_SEED)
    metrics = runs.student(fused)
    assert metrics["map"] is None and 0.0 <= metrics["detection"]["mAP"] <= 1.0
    other = load_checkpoint(runs.teacher(Teacher(seed=UNUSED_SEED)))
    assert other["modality"] == "fusion" and other["config"]["train"]["seed"] == UNUSED_SEED
    # As long as a teacher: the same steps as the fused teacher's run.
    steps = {name: len((runs.folder(name) / "log.csv").read_text().splitlines())
             for name in ("teacher-lidarteacher", f"teacher-t{UNUSED_SEED}")}
    assert len(set(steps.values())) == 1 and min(steps.values()) > 1, steps
    masks = runs.masks(MaskRun(query="fused", teacher_seed=UNUSED_SEED))
    assert masks == tmp_path / "runs" / f"masks-fused-b3-t{UNUSED_SEED}" / "masks.pt"
    spec = runs.student_spec(fused)
    assert spec["inputs"]["teacher"][0] == f"runs/teacher-t{UNUSED_SEED}/model.pt"
    with pytest.raises(ValueError, match="no student may use it"):
        run_experiment(dataroot, world.version, tmp_path, "quick", seeds=(0, UNUSED_SEED))
    for fuser in ("none", "convfuser"):
        with pytest.raises(ValueError, match="generated masks are the MGFM teacher's"):
            Student("lidar", "vexkd", fuser=fuser)


def test_a_map_student_distils_from_a_teacher_of_the_map_alone(tiny_world, tmp_path):
    """The paper trains a model per task: a map-only teacher starts from the map-only LiDAR
    student, has the map head alone, and its mask generators are the map's only."""
    from vexkd_core.checkpoint import load_checkpoint, read_payload
    from vexkd_core.config import load_config
    from vexkd_train.experiment_plan import Student, Suite
    from vexkd_train.experiment_runs import Runs

    dataroot, world = tiny_world
    runs = Runs(dataroot, world.version, tmp_path, load_config("tiny"), Suite(epochs=1, mask_epochs=1, seeds=(0,),
                                                                              max_steps=2), progress=False)
    student = Student("lidar", "vexkd", tasks="map", teacher_tasks="map")
    metrics = runs.student(student)
    assert metrics["detection"] is None and 0.0 <= metrics["map"]["mIoU"] <= 1.0
    teacher = load_checkpoint(runs.teacher(student.teacher))
    assert runs.teacher(student.teacher) == tmp_path / "runs" / "teacher-maponly" / "model.pt"
    assert teacher["modality"] == "fusion" and teacher["config"]["train"]["tasks"] == "map"
    assert not (tmp_path / "runs" / "teacher").exists()  # the multi-task teacher is not needed
    spec = runs.teacher_spec(student.teacher)
    assert spec["inputs"]["lidar"][0] == "runs/lidar-map-baseline-s0/model.pt"
    generators = read_payload(runs.masks(student.masks))["generators"]
    assert sorted(generators) == ["segmentation/high", "segmentation/low"]
    assert runs.student_spec(student)["inputs"]["masks"][0] == "runs/masks-learned-b3-maponly/masks.pt"
    with pytest.raises(ValueError, match="a map teacher has nothing to distil"):
        Student("lidar", "full", tasks="detection", teacher_tasks="map")
    with pytest.raises(ValueError, match="needs a teacher with a detection head"):
        Student("lidar", "gaussian", tasks="map", teacher_tasks="map")


def test_per_task_rows_take_detection_and_map_from_their_own_students():
    from vexkd_train.experiment_plan import Student, STUDY_TABLES
    from vexkd_train.experiment_report import summarised

    plan = tables((0, 1), names=STUDY_TABLES)  # a model per task in any suite
    lidar = plan["study-lidar"]
    assert [student.tasks for _, student in tables((0,), names=("comparison",), per_task=True)["comparison"]] \
        == ["detection", "map"] * 4 and {s.tasks for _, s in tables((0,), names=("comparison",))["comparison"]} \
        == {"both"}
    assert {student.tasks for _, student in lidar} == {"detection", "map"}
    assert {student.tasks for _, student in plan["study-camera"]} == {"detection"}
    map_teacher = {label: student for label, student in plan["study-map-teacher"] if student.seed == 0}
    assert {student.tasks for student in map_teacher.values()} == {"map"}
    # The multi-task teacher's runs keep the names (and so the records) they had before
    # teachers of one task; the map-only teacher's are runs of their own.
    assert {s.name for label, s in lidar if label == "whole map" and s.seed == 0} \
        == {"lidar-det-full-low+high-at-b3-s0", "lidar-map-full-low+high-at-b3-s0"}
    assert "GT-centred Gaussian" not in map_teacher  # its boxes need a detection head
    assert map_teacher["whole map"].name == "lidar-map-full-low+high-at-b3-maponly-s0"
    assert map_teacher["self-distillation: whole map from a LiDAR-only map model"].teacher.name \
        == "teacher-lidarteacher-maponly"
    assert map_teacher["no FD"].name == "lidar-map-baseline-s0"
    assert all(sum(1 for label, s in lidar if label == row and s.seed == 0) == 2 for row, _ in lidar)

    def run(student: Student) -> dict:
        detection = {"mAP": 0.1 + student.seed, "NDS": 0.2, "per_class_ap": dict.fromkeys(DETECTION_CLASSES, 0.1)}
        segmentation = {"mIoU": 0.5 + student.seed, "iou": {"drivable_area": 0.5}}
        return {"detection": detection if student.tasks == "detection" else None,
                "map": segmentation if student.tasks == "map" else None,
                "latency_ms": {"total": 10.0}, "parameters": 5}

    rows = summarised(lidar, run)
    assert rows["no FD"]["mAP"]["values"] == [0.1, 1.1] and rows["no FD"]["mIoU"]["values"] == [0.5, 1.5]
    assert rows["whole map"]["baseline"] == "no FD" and rows["no FD"]["baseline"] is None
    assert rows["self-distillation: whole map from a LiDAR-only teacher"]["baseline"] == "no FD"
