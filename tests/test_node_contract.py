"""What a monitoring consumer or an integrator sees of a running detector node: /diagnostics
once a second (rates, drops, latency, the last problem), the stamped
~/debug/pipeline_latency_ms, the outputs `vexkd-ros stack --record` keeps, and
config/detector.yaml applied under a namespace."""
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from autoware_internal_debug_msgs.msg import Float64Stamped
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from std_msgs.msg import Float64
from rcl_interfaces.srv import GetParameters
from tf2_msgs.msg import TFMessage

from tests.support.ros_nodes import Harness, cloud, start_node, static_and_pose, stop_node
from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.models.vexkd import build_model
from vexkd_core.training_data import TrainingData
from vexkd_ros import bag
from vexkd_ros.conversions import stamp_to_ns
from vexkd_ros.node_outputs import FROM_ARRIVAL, FROM_STAMP, pipeline_latency
from vexkd_ros.stack import NodeSpec

pytestmark = pytest.mark.ros

NODE = "lidar_detector"
TRAINED_ON = TrainingData("demo_world", "v1.0-trainval", "train", 48, synthetic=True)
CONFIG_FILE = Path(__file__).resolve().parent.parent / "config" / "detector.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = load_config("tiny", ["model.lidar.sweeps=1"])
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("observed") / "lidar.pt", build_model(config, "lidar"), config,
                           "lidar", training_data=TRAINED_ON)


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {pair.key: pair.value for pair in status.values}


def test_diagnostics_and_latency_as_a_consumer_reads_them(checkpoint, rclpy_context):
    process = start_node("lidar", checkpoint)
    harness = Harness(rclpy_context, NODE)
    reports, latencies = [], {}  # reports: (array stamp ns, our status)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        reports.extend((stamp_to_ns(msg.header.stamp), s) for s in msg.status if s.name == f"{NODE}: detector")

    harness.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    harness.node.create_subscription(Float64Stamped, f"/{NODE}/debug/pipeline_latency_ms",
                                     lambda m: latencies.__setitem__(stamp_to_ns(m.stamp), m.data), 10)
    # The infer stage and its parts (this torch model's modules), each frame's on its own topic.
    stages = {name: [] for name in ("infer", "infer/inputs", "infer/lidar_encoder", "infer/decoder",
                                    "infer/detection_head", "infer/map_head")}
    for name, received in stages.items():
        harness.node.create_subscription(Float64, f"/{NODE}/debug/processing_time_ms/{name}",
                                         lambda m, r=received: r.append(m.data), 10)
    frames = 5
    try:
        harness.wait_until_connected(process, "/LIDAR_TOP")
        harness.connect({"/LIDAR_TOP": cloud(0, 1), "/tf": TFMessage(), "/tf_static": TFMessage()})
        warm_up = time.time_ns()  # the first answer: see Harness.offer_until_answered
        static_and_pose(harness, [warm_up])
        harness.offer_until_answered("/LIDAR_TOP", cloud(warm_up, 5000), warm_up, every_s=30)
        # A lost copy of the warm-up never reaches the node: its counters are read after it.
        harness.spin_until(lambda: reports and int(values(reports[-1][1])["frames_out"]) >= 1, 30,
                           "diagnostics counting the warm-up")
        before = values(reports[-1][1])
        for _ in range(frames):
            stamp = time.time_ns()  # a live sensor: latency is against the node's (wall) clock
            static_and_pose(harness, [stamp])
            # /tf and the cloud are separate topics with no order between them, and a pose later
            # than the node's tf_timeout is a (correct) WARN. A live TF source streams ahead of
            # the sensors; here the pose gets half a second to land before its cloud.
            landed = time.monotonic() + 0.5
            harness.spin_until(lambda: time.monotonic() > landed, 5, "the pose to land")
            harness.publish("/LIDAR_TOP", cloud(stamp, 5000))
            harness.answered(stamp)
            harness.spin_until(lambda: stamp in latencies, 30, "the pipeline latency")
            assert 0 < latencies[stamp] < (time.time_ns() - stamp) * 1e-6
        counted = lambda name: int(values(reports[-1][1])[name]) - int(before[name])  # noqa: E731
        harness.spin_until(lambda: counted("frames_out") == frames, 30, "diagnostics counting every frame")
        healthy = reports[-1][1]
        report = values(healthy)
        assert healthy.level == DiagnosticStatus.OK and healthy.hardware_id == NODE
        assert counted("triggers_in") == frames and counted("dropped") == 0
        assert float(report["pipeline_latency_ms"]) == pytest.approx(latencies[stamp], abs=1e-3)
        assert float(report["processing_time_ms"]) > 0 and report["last_error"] == ""
        harness.spin_until(lambda: all(len(received) >= frames - 1 for received in stages.values()), 10,
                           "the infer stage's parts")  # the parts' publishers are made at the first frame
        parts = {name: received for name, received in stages.items() if name != "infer"}
        assert all(0 < value <= max(stages["infer"]) for received in parts.values() for value in received)
        assert sum(np.median(received) for received in parts.values()) <= np.median(stages["infer"]) * 1.05 + 0.5
        assert report["trained_on"] == TRAINED_ON.describe()
        published = dict(harness.node.get_publisher_names_and_types_by_node(NODE, "/"))
        recorded = NodeSpec("lidar", checkpoint).output_topics()  # what `vexkd-ros stack --record` keeps
        assert {t: published.get(t) for t in recorded} == {t: [bag.type_name(k)] for t, k in recorded.items()}

        harness.publish("/LIDAR_TOP", cloud(time.time_ns(), 1000, frame="nowhere"))
        harness.spin_until(lambda: reports[-1][1].level == DiagnosticStatus.WARN, 30, "a WARN status")
        assert "nowhere" in values(reports[-1][1])["last_warning"]
        count = len(reports)
        harness.spin_until(lambda: len(reports) >= count + 2, 10, "two more reports")
        assert reports[-1][1].level == DiagnosticStatus.OK  # a WARN covers the period its warning came in
        periods = np.diff([stamp for stamp, _ in reports[-3:]]) * 1e-9
        assert np.all((periods > 0.5) & (periods < 1.5)), periods
        assert report["latency_from"] == FROM_STAMP

        # A 2018 bag replayed on wall time: its stamps are years off the node's clock, so the
        # latency counts from each cloud's arrival (it read 2.6e11 ms) and says so.
        replayed = 1_533_151_603 * 1_000_000_000
        static_and_pose(harness, [replayed - 50_000_000, replayed])  # two: a jump back in /tf is confirmed
        harness.offer_until_answered("/LIDAR_TOP", cloud(replayed, 5000), replayed)
        harness.spin_until(lambda: replayed in latencies, 30, "the replayed cloud's latency")
        assert 0 < latencies[replayed] < 30_000
        harness.spin_until(lambda: values(reports[-1][1])["latency_from"] == FROM_ARRIVAL, 30,
                           "diagnostics counting latency from arrival")
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output
    assert output.count("pipeline_latency_ms counts from each input's arrival") == 1, output
    start_line = output.splitlines()[0]
    assert "lidar model" in start_line and "trained on synthetic world 'demo_world' (v1.0-trainval, split train, " \
        "48 samples)" in start_line, start_line


def test_the_parameter_file_applies_to_a_node_in_a_namespace(checkpoint, rclpy_context, tmp_path):
    """config/detector.yaml as shipped, one value changed, given to /robot/lidar_detector."""
    text = CONFIG_FILE.read_text()
    assert text.count("marker_score_threshold: 0.3") == 3
    changed = tmp_path / "detector.yaml"
    changed.write_text(text.replace("marker_score_threshold: 0.3", "marker_score_threshold: 0.55"))
    command = NodeSpec("lidar", checkpoint).command() + ["--params-file", str(changed), "-r", "__ns:=/robot"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    harness = Harness(rclpy_context, f"robot/{NODE}")
    try:
        client = harness.node.create_client(GetParameters, f"/robot/{NODE}/get_parameters")
        response = harness.call(client, GetParameters.Request(names=["marker_score_threshold", "fixed_frame"]), 90,
                                "the namespaced node's get_parameters to answer")
        threshold, frame = response.values
        assert threshold.double_value == 0.55 and frame.string_value == "map"
    finally:
        output = stop_node(process)
    assert process.returncode == 0, output


def test_latency_counts_from_the_stamp_only_when_the_stamp_is_on_the_nodes_clock():
    now = 1_796_000_000 * 1_000_000_000
    assert pipeline_latency(now, now - 35_000_000, 0.02) == (pytest.approx(35.0), FROM_STAMP)
    assert pipeline_latency(now, 1_533_151_603 * 1_000_000_000, 0.02) == (pytest.approx(20.0), FROM_ARRIVAL)
    assert pipeline_latency(now, now + 60 * 1_000_000_000, 0.02).counted_from == FROM_ARRIVAL  # stamps from ahead
