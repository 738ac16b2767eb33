"""Error lines that name the right problem, through the real console scripts: one line,
no traceback, exit code 2."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent


def error_line(tool: str, *args, cwd: Path) -> str:
    result = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("tool, args", [
    ("vexkd-data", ["synth", "--bogus"]),  # --out is missing too: the typo is what to report
    ("vexkd-data", ["render", "--sample", "0", "--bogus"]),
    ("vexkd-data", ["--bogus"]),
    ("vexkd-ros", ["play", "--bogus"]),
    ("vexkd-ros", ["nuscenes-to-bag", "--bogus", "--dataroot", "x"]),
    ("vexkd-train", ["teacher", "--bogus"]),
])
def test_an_unknown_argument_is_reported_before_missing_ones(tool, args, tmp_path):
    line = error_line(tool, *args, cwd=tmp_path)
    assert "unknown argument --bogus" in line and "required" not in line, line


def test_without_an_unknown_argument_the_missing_one_is_reported(tmp_path):
    assert "required: --out" in error_line("vexkd-data", "synth", cwd=tmp_path)


def test_a_dataroot_that_is_a_file_is_called_a_file(tmp_path):
    (tmp_path / "README.md").write_text("# not a dataset\n")
    line = error_line("vexkd-data", "render", "--dataroot", "README.md", "--sample", "0", "--out", "x.png",
                      cwd=tmp_path)
    assert "README.md is a file, not a folder" in line, line


def test_play_says_what_is_wrong_with_the_bag_path(tmp_path):
    (tmp_path / "docs").mkdir()
    line = error_line("vexkd-ros", "play", "docs", cwd=tmp_path)
    assert "no metadata.yaml in docs: not a rosbag2 folder" in line, line
    line = error_line("vexkd-ros", "play", "missing", cwd=tmp_path)
    assert "missing does not exist" in line, line


def test_stack_names_record_when_the_record_bag_exists(tmp_path):
    (tmp_path / "replay-out").mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    line = error_line("vexkd-ros", "stack", "--bag", "bag", "--checkpoint", "model.pt", "--record", "replay-out",
                      cwd=tmp_path)
    assert "--record replay-out already exists" in line and "choose another --record" in line, line
    assert "--out" not in line


@pytest.mark.parametrize("args, expected", [
    (["--jobs", "0"], "jobs must be at least 1, not 0"),
    (["--set", "train.tasks=detection"], "it needs train.tasks=both, not detection"),
    (["--set", "train.teacher_sensor_dropout=1.5"],
     "train.teacher_sensor_dropout must be a probability in [0, 1], not 1.5"),
])
def test_experiment_names_a_bad_setting(args, expected, tiny_world, tmp_path):
    line = error_line("vexkd-train", "experiment", "--dataroot", tiny_world[0], "--version", tiny_world[1].version,
                      "--out", tmp_path / "out", *args, cwd=tmp_path)
    assert expected in line, line
