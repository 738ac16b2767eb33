"""Nothing lost, nothing stale: `write_dataset` removes only a world it wrote itself (its
marker) and only when asked to, never leaves half a world under the final name, and
what the project writes gets the mode the user's umask asks for."""
import json
import os
import stat

import pytest

from vexkd_core.data.synthetic import SynthConfig, write_dataset
from vexkd_core.data.synthetic import writer
from vexkd_core.io import atomic_write_bytes

pytestmark = pytest.mark.unit

# The smallest world there is: a few seconds to write.
SMALL = dict(scenes=2, val_scenes=1, samples_per_scene=2, sweeps=0, camera_sweeps=0, image_size=(32, 32),
             azimuth_steps=64, workers=1)


def small_world(out, seed=0) -> SynthConfig:
    return SynthConfig(out=out, seed=seed, **SMALL)


def marker(out) -> dict:
    return json.loads((out / writer.MARKER).read_text())


def nuscenes_download(root):
    """A folder laid out as a real nuScenes download: the layout a synthetic world has."""
    for name in ("samples/CAM_FRONT", "sweeps/LIDAR_TOP", "maps", "v1.0-trainval"):
        (root / name).mkdir(parents=True)
    (root / "v1.0-trainval" / "sample.json").write_text("[]")
    return root


def test_a_folder_without_the_marker_is_never_removed(tmp_path):
    download = nuscenes_download(tmp_path / "nuscenes")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"did not write \(no marker\); refusing to remove it"):
            write_dataset(small_world(download), progress=False, overwrite=overwrite)
    assert (download / "v1.0-trainval" / "sample.json").read_text() == "[]"
    assert os.listdir(tmp_path) == ["nuscenes"]  # refused before anything was written


def test_a_marked_world_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "world"
    write_dataset(small_world(out), progress=False)
    first = marker(out)
    assert first["writer"] == "vexkd-data synth" and first["config"]["seed"] == 0
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_dataset(small_world(out, seed=1), progress=False)
    assert marker(out) == first
    write_dataset(small_world(out, seed=1), progress=False, overwrite=True)
    second = marker(out)
    assert second["config"]["seed"] == 1 and second["write_id"] != first["write_id"]
    assert os.listdir(tmp_path) == ["world"]  # neither the partial nor the old world is left


def test_an_empty_folder_is_written_into(tmp_path):
    (tmp_path / "world").mkdir()
    write_dataset(small_world(tmp_path / "world"), progress=False)
    assert (tmp_path / "world" / "v1.0-trainval" / "sample.json").is_file()


def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_world(tmp_path, monkeypatch):
    out = tmp_path / "world"
    write_dataset(small_world(out), progress=False)
    first = marker(out)
    simulate = writer.simulate_scene

    def interrupted_at_the_second_scene(job, city, root):
        if job.index == 1:  # the first scene's files are on disk by now
            raise KeyboardInterrupt
        return simulate(job, city, root)

    monkeypatch.setattr(writer, "simulate_scene", interrupted_at_the_second_scene)
    for target, overwrite in ((out, True), (tmp_path / "new", False)):
        with pytest.raises(KeyboardInterrupt):
            write_dataset(small_world(target, seed=1), progress=False, overwrite=overwrite)
    assert marker(out) == first and (out / "v1.0-trainval" / "sample.json").is_file()
    assert os.listdir(tmp_path) == ["world"]


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(root) -> tuple[set[int], set[int]]:
    """(folder modes, file modes) of `root` and everything below it."""
    paths = [root, *root.rglob("*")]
    return ({stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()},
            {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()})


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_take_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    atomic_write_bytes(path, b"[]")  # a replacement too
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_bytes() == b"[]"
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary left beside it


def test_a_synthetic_world_takes_the_umask(tmp_path, umask):
    umask(0o022)
    write_dataset(small_world(tmp_path / "world"), progress=False)
    assert modes(tmp_path / "world") == ({0o755}, {0o644})


def test_a_bag_takes_the_umask(tmp_path, umask):
    from tf2_msgs.msg import TFMessage

    from vexkd_ros.bag import AtomicBagWriter

    umask(0o022)
    with AtomicBagWriter(tmp_path / "bag") as bag:
        bag.write("/tf", 1, TFMessage())
    assert modes(tmp_path / "bag") == ({0o755}, {0o644})
