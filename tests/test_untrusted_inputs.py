"""Inputs a user hands over are checked before they are used: a bag's metadata.yaml names
message types the player looks up but never imports, `--rate` stays within what the player can
keep, and a `.pcd.bin` that is not whole 20-byte points is refused by the one point reader that
the dataset and the bag converter share."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tf2_msgs.msg import TFMessage

from vexkd_core.data.sensor_files import DatasetError, read_points
from vexkd_ros.bag import AtomicBagWriter, BagError
from vexkd_ros.player import MAX_RATE, MIN_RATE, PlayOptions

pytestmark = pytest.mark.ros

BIN = Path(sys.executable).parent
ZEN = "The Zen of Python"  # what `import this` prints
HOSTILE_TYPES = {"/zen": "this/msg/PointCloud2", "/escape": "../../os/msg/PointCloud2"}


def vexkd_ros(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-ros"), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command: exit 2, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def bag_with_types(path: Path, types: dict[str, str]) -> Path:
    """A real two-message-per-topic bag whose metadata.yaml then claims `types` ({topic: type})."""
    with AtomicBagWriter(path) as writer:
        for topic in ("/tf", *types):
            for stamp_ns in (1_000_000, 2_000_000):
                writer.write(topic, stamp_ns, TFMessage())
    metadata_file = path / "metadata.yaml"
    metadata = yaml.safe_load(metadata_file.read_text())
    for topic in metadata["rosbag2_bagfile_information"]["topics_with_message_count"]:
        name = topic["topic_metadata"]["name"]
        topic["topic_metadata"]["type"] = types.get(name, topic["topic_metadata"]["type"])
    metadata_file.write_text(yaml.safe_dump(metadata))
    return path


def test_a_bag_type_is_looked_up_never_imported_and_its_unknown_topics_are_skipped(tmp_path):
    bag = bag_with_types(tmp_path / "bag", HOSTILE_TYPES)
    result = vexkd_ros("play", bag, cwd=tmp_path)
    assert result.returncode == 0 and "published 2 messages" in result.stdout, result.stderr
    assert ZEN not in result.stdout + result.stderr and "Traceback" not in result.stderr
    skipped = [line for line in result.stderr.splitlines() if "skipping topics" in line]
    assert len(skipped) == 1, result.stderr
    for topic, msgtype in HOSTILE_TYPES.items():
        assert f"'{topic}' (type '{msgtype}')" in skipped[0], skipped[0]
    assert "'/tf'" not in skipped[0]


def test_a_bag_with_nothing_known_to_play_or_a_requested_unknown_topic_is_refused(tmp_path):
    only_unknown = bag_with_types(tmp_path / "only_unknown", {"/tf": HOSTILE_TYPES["/zen"]})
    result = vexkd_ros("play", only_unknown, cwd=tmp_path)
    assert ZEN not in result.stdout
    assert "no topic of the bag has a message type the player knows: '/tf' (type 'this/msg/PointCloud2')" in \
        refusal(result)
    mixed = bag_with_types(tmp_path / "mixed", HOSTILE_TYPES)
    result = vexkd_ros("play", mixed, "--topics", "/tf", "/escape", cwd=tmp_path)
    assert "--topics names topics of a message type the player does not know: " \
           "'/escape' (type '../../os/msg/PointCloud2')" in refusal(result)


@pytest.mark.parametrize("rate", ["nan", "inf", "0", "-1", "1e-300", "1e9"])
def test_play_refuses_a_rate_outside_its_range_in_one_line(rate, tmp_path):
    bag = bag_with_types(tmp_path / "bag", {})
    line = refusal(vexkd_ros("play", bag, "--rate", rate, cwd=tmp_path))
    assert f"--rate must be between {MIN_RATE:g} and {MAX_RATE:g}, not {float(rate):g}" in line, line


def test_the_rate_range_is_one_check_that_the_help_states(tmp_path):
    with pytest.raises(BagError, match="--rate must be between"):
        PlayOptions(rate=float("nan"))  # the bag_player node and any library caller
    (tmp_path / "model.pt").write_bytes(b"")
    line = refusal(vexkd_ros("stack", "--bag", tmp_path, "--checkpoint", "model.pt", "--rate", "inf", cwd=tmp_path))
    assert "--rate must be between" in line, line
    for command in ("play", "stack"):
        help_text = " ".join(vexkd_ros(command, "--help", cwd=tmp_path).stdout.split())
        assert f"from {MIN_RATE:g} to {MAX_RATE:g}" in help_text, help_text


@pytest.mark.parametrize("trailing_bytes", [1, 2, 3])
def test_a_point_file_that_is_not_whole_points_is_refused_naming_it(trailing_bytes, tmp_path):
    points = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    good, bad = tmp_path / "good.pcd.bin", tmp_path / "bad.pcd.bin"
    good.write_bytes(points.tobytes())
    bad.write_bytes(points.tobytes() + b"\0" * trailing_bytes)
    np.testing.assert_array_equal(read_points(good), points)
    with pytest.raises(DatasetError) as error:
        read_points(bad)
    assert str(bad) in str(error.value) and f"{60 + trailing_bytes} bytes" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_bag_converter_refuses_a_point_file_with_trailing_bytes(tiny_world, tiny_nusc, tmp_path):
    dataroot, world = tiny_world
    copy = tmp_path / "dataroot"
    shutil.copytree(dataroot, copy)
    scene = sorted(tiny_nusc.scene, key=lambda s: s["name"])[-1]
    first_sample = tiny_nusc.get("sample", scene["first_sample_token"])
    lidar_file = tiny_nusc.get("sample_data", first_sample["data"]["LIDAR_TOP"])["filename"]
    with open(copy / lidar_file, "ab") as stream:
        stream.write(b"\0\0")
    result = vexkd_ros("nuscenes-to-bag", "--dataroot", copy, "--version", world.version, "--scene", scene["name"],
                       "--out", tmp_path / "bags", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]  # the lines before it are the converter's progress bar
    assert line.startswith("vexkd-ros: error: ") and str(copy / lidar_file) in line, line
    assert "is not a whole number of 20-byte points" in line, line
    assert not (tmp_path / "bags" / scene["name"]).exists()


def test_a_topic_name_ros_refuses_is_skipped_not_a_traceback(tmp_path):
    with AtomicBagWriter(tmp_path / "bag") as writer:
        for topic in ("/tf", "/two words"):
            writer.write(topic, 1_000_000, TFMessage())
    result = vexkd_ros("play", tmp_path / "bag", cwd=tmp_path)
    assert result.returncode == 0 and "published 1 messages" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr and "'/two words' (type 'tf2_msgs/msg/TFMessage')" in result.stderr
