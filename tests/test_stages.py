"""Stages (the experiment's runs, the demo's steps) are reused only while what they consumed
is the same, and a report's total counts only the time the run itself spent. Trivial actions
stand in for the real ones."""
import json
import os
import types
from pathlib import Path

import pytest

from vexkd_core.fingerprint import dataset_identity, file_stamp
from vexkd_train import stages as module
from vexkd_train.stages import StageTime, Stages, timings_table

pytestmark = pytest.mark.unit


def _world(root: Path, samples: list[str]) -> Path:
    """A stand-in world: the tables and folders dataset_identity looks at."""
    (root / "v-test").mkdir(parents=True, exist_ok=True)
    (root / "v-test" / "sample.json").write_text(json.dumps([{"token": token} for token in samples]))
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True, exist_ok=True)
    return root


class Action:
    """Writes the stage's output and counts its calls."""

    def __init__(self, output: Path):
        self.output, self.calls = output, 0

    def __call__(self):
        self.calls += 1
        self.output.write_text(str(self.calls))


def test_a_stage_reruns_when_the_world_it_read_is_rewritten(tmp_path):
    world = _world(tmp_path / "world", ["a", "b"])
    render = Action(tmp_path / "sample.png")

    def run() -> bool:  # as the demo does it: a fresh Stages per run, the world's identity read from disk
        return Stages(tmp_path).run("render", {"data": dataset_identity(world, "v-test"), "code": "code"},
                                    [render.output], render)

    assert run() and render.calls == 1
    assert not run() and render.calls == 1  # nothing changed: reused
    _world(world, ["a", "c"])  # rewritten by hand: same table, other contents
    assert run() and render.calls == 2
    assert not run()
    render.output.unlink()  # an output gone is made again, whatever the fingerprint
    assert run() and render.calls == 3


def test_a_stage_reruns_when_an_input_checkpoint_is_rewritten(tmp_path):
    model = tmp_path / "runs" / "lidar" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"first")
    evaluate = Action(tmp_path / "metrics.json")

    def run() -> bool:
        return Stages(tmp_path).run("evaluate lidar", {"data": "world", "checkpoint": file_stamp(model, tmp_path)},
                                    [evaluate.output], evaluate)

    assert run() and not run()
    model.write_bytes(b"other")  # retrained: same size, new mtime
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000))
    assert run() and evaluate.calls == 2


def test_a_stage_that_failed_is_not_reused(tmp_path):
    output = tmp_path / "model.pt"

    def fails():
        output.write_text("half")
        raise RuntimeError("interrupted")

    stages = Stages(tmp_path)
    assert stages.run("train", "same", [output], Action(output))
    output.unlink()
    try:
        stages.run("train", "same", [output], fails)
    except RuntimeError:
        pass
    # The half-written output exists and the fingerprint is the same: still made again.
    again = Action(output)
    assert Stages(tmp_path).run("train", "same", [output], again) and again.calls == 1


def test_the_report_total_is_the_wall_clock_time_this_run_spent(tmp_path, monkeypatch):
    # Each Stages takes the time it starts at; each stage that runs, its start and end.
    clock = iter([0.0, 0.0, 500.0, 1000.0, 1003.0, 1004.0, 1010.0, 1017.0, 1020.0])
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    first = Stages(tmp_path)
    first.run("train lidar", "lidar v1", [], lambda: None)  # 500 s
    first.run("evaluate lidar", "eval v1", [], lambda: None)  # 3 s

    second = Stages(tmp_path)  # starts at 1004
    second.run("train lidar", "lidar v1", [], lambda: None)  # reused: its 500 s were spent by the first run
    second.run("evaluate lidar", "eval v2", [], lambda: None)  # runs again: 7 s
    assert second.timings == [StageTime("train lidar", 500.0, reused=True),
                              StageTime("evaluate lidar", 7.0, reused=False)]
    table = timings_table(second.timings, second.elapsed())  # at 1020: 16 s since the run began
    assert "| train lidar | (500) | reused |" in table and "| evaluate lidar | 7 | |" in table
    assert table[-1] == "| total (this run, wall clock) | 16 | 1 of 2 reused |"


def test_each_stage_keeps_its_own_record_with_its_spec_and_seconds(tmp_path):
    """One record per stage, so stages in other processes (students side by side) never write
    the same file; a spec reads back equal though JSON turns its tuples into lists."""
    output = tmp_path / "lidar.pt"
    assert Stages(tmp_path / "records").run("train lidar-vexkd", {"levels": ("low", "high")}, [output],
                                            Action(output))
    record = json.loads((tmp_path / "records" / "train_lidar-vexkd.json").read_text())
    assert record["spec"] == {"levels": ["low", "high"]} and record["seconds"] >= 0
    assert not Stages(tmp_path / "records").run("train lidar-vexkd", {"levels": ("low", "high")}, [output],
                                                Action(output))
    assert not Stages(tmp_path / "records").is_done("train lidar-vexkd", {"levels": ("low",)}, [output])
    # Asked for again in the same run (every distilled student needs the teacher): listed once.
    stages = Stages(tmp_path / "records")
    for _ in range(3):
        stages.run("train lidar-vexkd", {"levels": ("low", "high")}, [output], Action(output))
    assert [timing.name for timing in stages.timings] == ["train lidar-vexkd"]
    # A side-by-side process's timings join once each: its own reuse of the teacher is not news.
    stages.join([StageTime("train lidar-vexkd", 1.0, reused=True), StageTime("train camera-vexkd", 9.0, False)])
    assert [timing.name for timing in stages.timings] == ["train lidar-vexkd", "train camera-vexkd"]
