"""vexkd-data from the shell: writes and renders, and says what is wrong in one line."""
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-data"), *args], capture_output=True, text=True, timeout=600)


def test_synth_then_render_a_sample(tmp_path):
    out = tmp_path / "world"
    result = run("synth", "--out", str(out), "--scenes", "2", "--val-scenes", "1", "--samples-per-scene", "2",
                 "--sweeps", "1", "--camera-sweeps", "0", "--image-size", "160x90", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 scenes, 4 samples" in result.stdout
    picture = tmp_path / "sample.png"
    result = run("render", "--dataroot", str(out), "--sample", "1", "--out", str(picture))
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(picture))
    assert image.shape[0] == 600 and image.shape[1] > 1200  # BEV beside the camera mosaic
    assert image.std() > 20  # not blank


@pytest.mark.parametrize("args, message", [
    (["render", "--dataroot", "/nonexistent/world", "--sample", "0", "--out", "x.png"], "does not exist"),
    (["synth", "--out", "x", "--image-size", "12"], "expected WIDTHxHEIGHT"),
    (["synth", "--out", "x", "--scenes", "1"], "at least 2"),
    (["synth", "--out", "x", "--bogus"], "unknown argument --bogus"),
    (["synth", "--bogus"], "unknown argument --bogus"),
    (["synth"], "required: --out"),
    (["render", "--dataroot", ".", "--sample", "0", "--out", "x.png"], "no nuScenes tables"),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    result = subprocess.run([str(BIN / "vexkd-data"), *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_synth_never_removes_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    for overwrite in ([], ["--overwrite"]):
        result = run("synth", "--out", str(tmp_path), "--scenes", "2", "--val-scenes", "1", *overwrite)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "did not write (no marker); refusing to remove it" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_synth_replaces_its_own_world_only_with_overwrite(tmp_path):
    world = ["--out", str(tmp_path / "world"), "--scenes", "2", "--val-scenes", "1", "--samples-per-scene", "2",
             "--sweeps", "0", "--camera-sweeps", "0", "--image-size", "32x32", "--workers", "1"]
    assert run("synth", *world).returncode == 0
    result = run("synth", *world)
    assert result.returncode == 2 and "pass --overwrite" in result.stderr, result.stderr
    result = run("synth", *world, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]
