"""A suite resumes on a new machine from its ledger: the world written again and the teacher
and mask generators retrained come out the same, so a student the ledger holds is not trained
again and its figures are the first machine's; a student whose inputs changed, or whose
evaluation was of another world, is not taken from it."""
import hashlib
import json
import shutil
from dataclasses import replace

import pytest

from vexkd_core.fingerprint import dataset_contents, dataset_identity
from vexkd_train.ledger import Ledger

pytestmark = pytest.mark.slow


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_suite_resumes_on_a_new_machine_from_its_ledger(tiny_world, tmp_path):
    from vexkd_core.config import load_config
    from vexkd_core.data.synthetic import write_dataset
    from vexkd_train.experiment import ExtraEvaluations
    from vexkd_train.experiment_plan import SUITES, Student
    from vexkd_train.experiment_runs import Runs

    _, world = tiny_world
    student = Student("camera", "vexkd", tasks="detection")  # distilled through generated masks
    name = student.name

    def run_on_this_machine() -> tuple[Runs, dict]:
        """The student as the study's side-by-side processes run it: trained, evaluated on val,
        on the test world (here the training world again) and its parts, and kept in the ledger."""
        runs = Runs(dataroot, world.version, out, load_config("tiny"), SUITES["quick"], progress=False, ledger=ledger)
        ExtraEvaluations(frozenset(), frozenset(), None, frozenset({student}), dataroot)(runs, student)
        return runs, {"val": runs.metrics(name), "test": runs.world_metrics(name, dataroot, "test"),
                      "parts": runs.world_part_metrics(name, dataroot, "test")}

    # A new machine has the same checkout and commands, and none of the files: the world is written
    # again from its seed (new files, same contents) and the suite's folder starts empty.
    dataroot, out, ledger, first = tmp_path / "world", tmp_path / "out", tmp_path / "ledger", tmp_path / "first"
    write_dataset(replace(world, out=dataroot), progress=False)
    identity, contents = dataset_identity(dataroot, world.version), dataset_contents(dataroot, world.version)
    _, before = run_on_this_machine()
    entry = json.loads((ledger / f"{name}.json").read_text())
    assert set(entry["results"]) == {"metrics", "step_seconds", "test", "test_parts", "train_seconds", "worlds",
                                     "parts"}
    assert entry["results"]["worlds"] == {"test": contents}
    assert entry["spec"]["inputs"]["teacher"][:2] == ["runs/teacher/model.pt", "sha256"]

    out.rename(first)
    shutil.rmtree(dataroot)
    write_dataset(replace(world, out=dataroot), progress=False)
    assert dataset_identity(dataroot, world.version) != identity
    assert dataset_contents(dataroot, world.version) == contents
    runs, after = run_on_this_machine()
    # Seeded training made the same LiDAR start, teacher and generators, byte for byte ...
    for run in ("lidar-baseline-s0/model.pt", "teacher/model.pt", "masks-learned-b3/masks.pt"):
        assert sha256(out / "runs" / run) == sha256(first / "runs" / run), run
    # ... so the student did not train again, and its figures are the first machine's (as JSON,
    # where NaN, a class a part lacks, equals itself).
    assert (first / "runs" / name / "model.pt").is_file() and not (out / "runs" / name).exists()
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)

    # A teacher that came out different is a new input: its students are trained again.
    spec = runs.student_spec(student, portable=True)
    assert Ledger(ledger).results(name, spec) is not None
    assert spec["inputs"]["teacher"] == ["runs/teacher/model.pt", "sha256", sha256(out / "runs" / "teacher" / "model.pt")]
    other_teacher = {**spec, "inputs": {**spec["inputs"], "teacher": ["runs/teacher/model.pt", "sha256", "0" * 64]}}
    assert Ledger(ledger).results(name, other_teacher) is None
    # Asked for its figures on another test world (a world of another seed), the student trains here.
    other_world = tmp_path / "other_world"
    write_dataset(replace(world, out=other_world, seed=world.seed + 1), progress=False)
    assert dataset_contents(other_world, world.version) != contents
    fresh = Runs(dataroot, world.version, out, load_config("tiny"), SUITES["quick"], progress=False, ledger=ledger)
    fresh.student(student, evaluated_on={"test": other_world})
    assert (out / "runs" / name / "model.pt").is_file()


def test_a_damaged_entry_is_one_clear_error(tmp_path):
    (tmp_path / "run.json").write_text('{"format": 1, "spec"')
    with pytest.raises(ValueError, match="run.json is not JSON.*restore it from git"):
        Ledger(tmp_path).results("run", {})
