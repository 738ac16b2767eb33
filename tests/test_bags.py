"""nuScenes -> rosbag2 -> replay: bags hold every sample_data at its own stamp, read back with
rosbags and the mcap reader, TF reproduces the devkit's poses; the stack replays a bag
through the nodes and leaves no process behind."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mcap.reader import make_reader
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from tf2_msgs.msg import TFMessage

from tests.support import ros_rviz
from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.geometry import make_transform
from vexkd_core.models.vexkd import build_model
from vexkd_ros.bag import AtomicBagWriter, BagError
from vexkd_ros.player import message_class
from vexkd_ros.scene_messages import GT_MARKERS_TOPIC, LIDAR_CHANNEL, SceneMessages, scene_source, scene_topics
from vexkd_ros.tf_buffer import TransformBuffer

pytestmark = pytest.mark.ros


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "vexkd_ros.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def scene(tiny_world):
    dataroot, world = tiny_world
    source = scene_source(dataroot, world.version)
    return SceneMessages(source, sorted(s["name"] for s in source.nusc.scene)[-1])


@pytest.fixture(scope="module")
def bags(tiny_world, scene, tmp_path_factory):
    dataroot, world = tiny_world
    out = tmp_path_factory.mktemp("bags")
    name = scene.scene["name"]
    for storage in ("mcap", "sqlite3"):
        result = cli("nuscenes-to-bag", "--dataroot", dataroot, "--version", world.version, "--scene", name,
                     "--out", out / storage, "--storage", storage)
        assert result.returncode == 0, result.stderr
    return {storage: out / storage / name for storage in ("mcap", "sqlite3")}


def devkit_counts(scene) -> dict[str, int]:
    """sample_data per channel of the scene, straight from the devkit tables."""
    nusc, counts = scene.nusc, {}
    sample_tokens = set()
    token = scene.scene["first_sample_token"]
    while token:
        sample_tokens.add(token)
        token = nusc.get("sample", token)["next"]
    for record in nusc.sample_data:
        if record["sample_token"] in sample_tokens and record["channel"].startswith(("CAM", "LIDAR")):
            counts[record["channel"]] = counts.get(record["channel"], 0) + 1
    return counts


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_holds_every_sample_data_at_its_stamp(bags, scene, storage):
    expected = devkit_counts(scene)
    with Reader(bags[storage]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        lidar = [c for c in reader.connections if c.topic == "/LIDAR_TOP"]
        stamps = [t for _, t, _ in reader.messages(connections=lidar)]
    for channel, count in expected.items():
        topics = ["/LIDAR_TOP"] if channel == LIDAR_CHANNEL else [f"/{channel}/image/compressed",
                                                                  f"/{channel}/camera_info"]
        for topic in topics:
            assert counts[topic] == count, topic
    lidar_records = [r for r in scene.records if r["channel"] == LIDAR_CHANNEL]
    assert stamps == [r["timestamp"] * 1000 for r in lidar_records]
    assert counts["/tf"] == sum(expected.values()) and counts["/tf_static"] == 1
    assert counts["/ground_truth/markers"] == scene.scene["nbr_samples"]
    assert set(counts) <= set(scene_topics())  # what the RViz config and the player's QoS are checked against


def test_rviz_shows_only_the_current_key_frames_ground_truth(scene):
    display, frames, sizes = ros_rviz.ShownMarkers(), 0, set()
    for record in scene.records:
        if record["channel"] == LIDAR_CHANNEL and record["is_key_frame"]:
            for message in scene.record_messages(record):
                if message.topic == GT_MARKERS_TOPIC:
                    display.receive(message.msg)
                    assert set(display.shown) == ros_rviz.added(message.msg)
                    frames, sizes = frames + 1, sizes | {len(display.shown)}
    assert frames == scene.scene["nbr_samples"] and len(sizes) > 1  # box counts vary: stale ones would show


def test_mcap_reader_reads_the_bag_and_rclpy_decodes_it(bags, scene):
    (path,) = list(bags["mcap"].glob("*.mcap"))
    counts, first = {}, {}
    with open(path, "rb") as stream:
        reader = make_reader(stream)
        for schema, channel, message in reader.iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            first.setdefault(channel.topic, (schema.name, message))
    assert counts["/LIDAR_TOP"] == devkit_counts(scene)[LIDAR_CHANNEL]
    schema, message = first["/CAM_FRONT/image/compressed"]
    image = deserialize_message(message.data, message_class(schema))
    assert bytes(image.data[:2]) == b"\xff\xd8" and message.log_time == image.header.stamp.sec * 10**9 + \
        image.header.stamp.nanosec
    cloud = deserialize_message(first["/LIDAR_TOP"][1].data, message_class("sensor_msgs/msg/PointCloud2"))
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "ring"] and cloud.header.frame_id == "LIDAR_TOP"


def test_tf_reproduces_the_devkit_sensor_to_global_of_every_key_frame(bags, scene):
    buffer = TransformBuffer(history_s=1e6)
    with Reader(bags["mcap"]) as reader:
        tf = [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
        for connection, _, data in reader.messages(connections=tf):
            buffer.add(deserialize_message(data, TFMessage), static=connection.topic == "/tf_static")
    nusc, checked = scene.nusc, 0
    for record in scene.records:
        if not record["is_key_frame"]:
            continue
        calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        ego = nusc.get("ego_pose", record["ego_pose_token"])
        devkit = make_transform(ego["rotation"], ego["translation"]) @ \
            make_transform(calibration["rotation"], calibration["translation"])
        np.testing.assert_allclose(buffer.lookup("map", record["channel"], record["timestamp"] * 1000), devkit,
                                   atol=1e-6)
        checked += 1
    assert checked == 7 * scene.scene["nbr_samples"]


def test_an_interrupted_bag_leaves_nothing_under_the_final_name(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(KeyboardInterrupt):
        with AtomicBagWriter(path) as writer:
            writer.write("/tf", 1, TFMessage())
            raise KeyboardInterrupt
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with AtomicBagWriter(path) as writer:
        writer.write("/tf", 1, TFMessage())
    assert path.is_dir()
    with pytest.raises(BagError, match="already exists"):
        AtomicBagWriter(path)


def test_cli_errors_are_one_line(tmp_path, tiny_world):
    for args in (["nuscenes-to-bag", "--dataroot", tmp_path / "nothing", "--all", "--out", tmp_path],
                 ["nuscenes-to-bag", "--dataroot", tiny_world[0], "--scene", "scene-9999", "--out", tmp_path],
                 ["play", tmp_path / "missing-bag"], ["play", tmp_path, "--rate", "0"],
                 ["stack", "--bag", tmp_path, "--checkpoint", tmp_path / "missing.pt"], ["play"]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def student_checkpoints(tmp_path_factory):
    config = load_config("tiny", ["model.lidar.sweeps=2"])
    folder, paths = tmp_path_factory.mktemp("stack_models"), []
    for modality in ("lidar", "camera"):
        torch.manual_seed(0)
        paths.append(save_checkpoint(folder / f"{modality}.pt", build_model(config, modality), config, modality))
    return paths


def test_stack_replays_the_bag_through_the_nodes_and_records(bags, scene, student_checkpoints, tmp_path):
    record = tmp_path / "outputs"
    result = cli("stack", "--bag", bags["mcap"], "--checkpoint", *student_checkpoints, "--record", record)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lidar_detector" in result.stdout and "camera_detector" in result.stdout
    lidar_stamps = {r["timestamp"] * 1000 for r in scene.records if r["channel"] == LIDAR_CHANNEL}
    camera_stamps = {r["timestamp"] * 1000 for r in scene.records if r["channel"] == "CAM_FRONT"}
    with Reader(record) as reader:
        for node, inputs in (("lidar_detector", lidar_stamps), ("camera_detector", camera_stamps)):
            connection = [c for c in reader.connections if c.topic == f"/{node}/output/objects"]
            answers = [deserialize_message(data, message_class(connection[0].msgtype)).header
                       for _, _, data in reader.messages(connections=connection)]
            stamps = [h.stamp.sec * 10**9 + h.stamp.nanosec for h in answers]
            assert len(stamps) > 0 and len(set(stamps)) == len(stamps)  # one answer per input processed
            assert set(stamps) <= inputs  # each carries its input's stamp
            line = next(line for line in result.stdout.splitlines() if line.startswith(node))
            frames_in, frames_out, dropped = map(int, line.split()[1:4])
            assert frames_in == len(inputs) and frames_out == len(stamps) and dropped == frames_in - frames_out


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
    return found


def test_ctrl_c_on_the_stack_leaves_no_process_behind(bags, student_checkpoints):
    stack = subprocess.Popen([sys.executable, "-m", "vexkd_ros.cli", "stack", "--bag", str(bags["mcap"]),
                              "--checkpoint", str(student_checkpoints[0]), "--rate", "0.1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = str(bags["mcap"])
    deadline = time.monotonic() + 120
    while len(_processes_mentioning(marker)) < 2:  # the stack and its player: nodes are up
        assert stack.poll() is None and time.monotonic() < deadline, stack.communicate()
        time.sleep(0.2)
    assert _processes_mentioning(str(student_checkpoints[0]))
    stack.send_signal(signal.SIGINT)
    stack.communicate(timeout=60)
    left = lambda: _processes_mentioning(marker) + _processes_mentioning(str(student_checkpoints[0]))  # noqa: E731
    deadline = time.monotonic() + 10  # its children may still be exiting as it returns
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(marker) == [] and _processes_mentioning(str(student_checkpoints[0])) == []
