"""Do the detector nodes keep up with their sensors? End to end, across processes.

Each node runs as its own process, started exactly as `vexkd-ros stack` starts it; this
process plays the sensors at their rates from a wall-clock schedule (LiDAR 20 Hz: a
34,720-point nuScenes-sized cloud; cameras 12 Hz: six 1600x900 JPEGs) with the vehicle's
/tf, and records when each answer (~/output/objects) arrives. Per node, backend (torch, the
exported float graph, its int8 quantisation) and rate (the sensor's, then a half and a
quarter of it; the backends interleaved at each rate): the share of triggers answered, end-to-end
latency (publish of the trigger to receipt of its answer) p50 / p90, and the CPU each
process used (cores: CPU seconds over wall seconds); per node and backend the highest of
those rates it kept up with (KEEPS_UP of the triggers answered). `tiny` preset, random
weights: every frame carries max_detections boxes, as a trained model's does at its
checkpoint's score threshold (0.05). Both processes share this machine's cores, as they
would on a robot's computer. Records bench/results/node_stream.json (a modality run again
replaces its entries).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2  # noqa: E402
from autoware_internal_debug_msgs.msg import Float64Stamped  # noqa: E402
from std_msgs.msg import Float64, Header  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from vision_msgs.msg import Detection3DArray  # noqa: E402

from bench_nodes import NODE_BACKEND, camera_images, cloud, model_files  # noqa: E402
from vexkd_core.data.sample import CAMERA_CHANNELS  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.modalities import reads  # noqa: E402
from vexkd_ros.conversions import intrinsics_to_camera_info, matrices_to_tf_message  # noqa: E402
from vexkd_ros.conversions import ns_to_stamp, stamp_to_ns  # noqa: E402
from vexkd_ros.environment import apply_default_ros_environment  # noqa: E402
from vexkd_ros.node_outputs import STAGES  # noqa: E402

INFER_PARTS = ("inputs", "layout", "network", "lidar_encoder", "camera_encoder", "fusion", "decoder",
               "detection_head", "map_head")
from vexkd_ros.scene_messages import LIDAR_TOPIC, camera_info_topic, image_topic  # noqa: E402
from vexkd_ros.stack import NodeSpec  # noqa: E402

RESULTS = REPO / "bench" / "results" / "node_stream.json"
RATE_HZ = {"lidar": 20.0, "camera": 12.0}  # the sensors'
RATE_DIVISORS = (1, 2, 4)
KEEPS_UP = 0.95
SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Sensors:
    """Publishers of the rig's inputs and a recorder of the node's answers."""

    def __init__(self, node_name: str):
        self.node = rclpy.create_node("vexkd_bench_sensors")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.tf = self.node.create_publisher(TFMessage, "/tf", 100)
        self.tf_static = self.node.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.lidar = self.node.create_publisher(PointCloud2, LIDAR_TOPIC, SENSOR_QOS)
        self.images = [self.node.create_publisher(CompressedImage, image_topic(c), SENSOR_QOS) for c in CAMERA_CHANNELS]
        self.infos = [self.node.create_publisher(CameraInfo, camera_info_topic(c), 10) for c in CAMERA_CHANNELS]
        self.answers: dict[int, float] = {}  # stamp -> monotonic receipt time
        self.node.create_subscription(Detection3DArray, f"/{node_name}/output/objects",
                                      lambda m: self.answers.setdefault(stamp_to_ns(m.header.stamp), time.monotonic()),
                                      100)
        # The node's own pipeline latency per stamp (~/debug/pipeline_latency_ms: from the input's
        # arrival in the node to its answer's publication); end-to-end less this is transport.
        self.pipeline_ms: dict[int, float] = {}
        self.node.create_subscription(Float64Stamped, f"/{node_name}/debug/pipeline_latency_ms",
                                      lambda m: self.pipeline_ms.setdefault(stamp_to_ns(m.stamp), m.data), 100)
        self.stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}  # the node's own, per answer
        # The infer stage's parts (the onnxruntime graph's inputs, layout, run; the torch network's modules).
        self.stage_ms.update({f"infer/{part}": [] for part in INFER_PARTS})
        for stage in self.stage_ms:
            self.node.create_subscription(Float64, f"/{node_name}/debug/processing_time_ms/{stage}",
                                          lambda m, s=stage: self.stage_ms[s].append(m.data), 100)

    def rig(self) -> None:
        static = [("base_link", name, np.eye(4), ns_to_stamp(0)) for name in ("LIDAR_TOP", *CAMERA_CHANNELS)]
        self.tf_static.publish(matrices_to_tf_message(static))

    def camera_infos(self, stamp_ns: int) -> None:
        """Each camera's CameraInfo, as a camera driver publishes it with every image."""
        k = np.array([[1266.0, 0, 816], [0, 1266.0, 491], [0, 0, 1]])
        for publisher, channel in zip(self.infos, CAMERA_CHANNELS):
            publisher.publish(intrinsics_to_camera_info(k, 1600, 900, Header(stamp=ns_to_stamp(stamp_ns),
                                                                              frame_id=channel)))

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.005, deadline - time.monotonic())))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; fields 14 and 15 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warmup_answers(values: list[float]) -> int:
    """The warm-up's answers are left out of the stage medians (a fifth of them, at most 10)."""
    return min(10, len(values) // 5)


def stream(modality: str, model_file: Path, backend: str, rate_hz: float, frames: int, warmup: int) -> dict:
    spec = NodeSpec(modality, model_file, NODE_BACKEND[backend])
    log = open(Path(tempfile.gettempdir()) / f"vexkd-bench-{spec.name}-{backend}.log", "w")
    process = subprocess.Popen(spec.command(), stdout=log, stderr=subprocess.STDOUT)
    sensors = Sensors(spec.name)
    inputs = [*sensors.images, *sensors.infos] if reads(modality, "camera") else [sensors.lidar]
    try:
        deadline = time.monotonic() + 120
        while any(p.get_subscription_count() == 0 for p in inputs) or sensors.node.count_publishers(
                f"/{spec.name}/output/objects") == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} ({backend}) did not start")
            sensors.spin_for(0.1)
        sensors.rig()
        sensors.spin_for(1.0)
        period_ns = int(1e9 / rate_hz)
        images = camera_images(0) if reads(modality, "camera") else None
        clouds = None if reads(modality, "camera") else [cloud(0, seed) for seed in range(4)]
        sent: dict[int, float] = {}
        start = time.monotonic()
        for k in range(warmup + frames):
            stamp = 10**9 + k * period_ns
            due = start + k / rate_hz
            sensors.spin_for(max(0.0, due - time.monotonic()))
            if k == warmup:
                cpu_start = (time.monotonic(), cpu_seconds(process.pid), cpu_seconds(os.getpid()))
            sensors.tf.publish(matrices_to_tf_message([("map", "base_link", np.eye(4), ns_to_stamp(stamp))]))
            if not reads(modality, "camera"):
                message = clouds[k % len(clouds)]
                message.header.stamp = ns_to_stamp(stamp)
                sent_at = time.monotonic()
                sensors.lidar.publish(message)
            else:
                sensors.camera_infos(stamp)
                for publisher, image in reversed(list(zip(sensors.images, images))):  # the trigger last
                    image.header.stamp = ns_to_stamp(stamp)
                    sent_at = time.monotonic()
                    publisher.publish(image)
            if k >= warmup:
                sent[stamp] = sent_at
        sensors.spin_for(1.0 / rate_hz)
        wall_s = time.monotonic() - cpu_start[0]
        node_cores = (cpu_seconds(process.pid) - cpu_start[1]) / wall_s
        sender_cores = (cpu_seconds(os.getpid()) - cpu_start[2]) / wall_s
        sensors.spin_for(2.0)
        latencies = [1e3 * (sensors.answers[s] - t) for s, t in sent.items() if s in sensors.answers]
        in_node = [sensors.pipeline_ms[s] for s in sent if s in sensors.answers and s in sensors.pipeline_ms]
        answered = len(latencies)
        return {"rate_hz": rate_hz, "sent": len(sent), "answered": answered,
                "answered_share": answered / len(sent),
                "latency_ms_p50": statistics.median(latencies) if latencies else None,
                "latency_ms_p90": float(np.percentile(latencies, 90)) if latencies else None,
                "node_pipeline_ms_p50": statistics.median(in_node) if in_node else None,
                "node_cpu_cores": node_cores, "sender_cpu_cores": sender_cores,
                "node_stages_ms_p50": {stage: statistics.median(values[warmup_answers(values):])
                                       for stage, values in sensors.stage_ms.items() if values}}
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        sensors.node.destroy_node()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--modalities", nargs="+", default=["lidar", "camera"])
    parser.add_argument("--backends", nargs="+", choices=tuple(NODE_BACKEND), default=list(NODE_BACKEND))
    parser.add_argument("--rate-divisors", nargs="+", type=float, default=list(RATE_DIVISORS),
                        help="streams at the sensor's rate divided by each")
    args = parser.parse_args()
    apply_default_ros_environment()
    rclpy.init()
    # A modality run again replaces its streams; the other modality's stay (run them one at a time).
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"streams": {}, "keeps_up_hz": {}}
    for table in ("streams", "keeps_up_hz"):
        results[table] = {key: row for key, row in results[table].items() if key.split()[0] not in args.modalities}
    results.update({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "preset": "tiny"})
    with tempfile.TemporaryDirectory() as folder:
        for modality in args.modalities:
            files = model_files(modality, "tiny", Path(folder), "int8" in args.backends)
            kept_up = {backend: [] for backend in args.backends}
            for divisor in args.rate_divisors:  # the backends interleaved at each rate
                rate_hz = RATE_HZ[modality] / divisor
                for backend in args.backends:
                    row = stream(modality, files[backend], backend, rate_hz, args.frames, args.warmup)
                    results["streams"][f"{modality} {backend} {rate_hz:g} Hz"] = row
                    if row["answered_share"] >= KEEPS_UP:
                        kept_up[backend].append(rate_hz)
                    print(f"{modality:6s} {backend:11s} at {rate_hz:4.1f} Hz: answered {row['answered']} of "
                          f"{row['sent']} ({100 * row['answered_share']:.0f} %), end-to-end p50 "
                          f"{row['latency_ms_p50']:.1f} ms, p90 {row['latency_ms_p90']:.1f} ms (in the node, arrival "
                          f"to publication: p50 {row['node_pipeline_ms_p50']:.1f} ms); CPU: node "
                          f"{row['node_cpu_cores']:.2f} cores, sender {row['sender_cpu_cores']:.2f}; node stages p50 "
                          + ", ".join(f"{k} {v:.0f}" for k, v in row["node_stages_ms_p50"].items()), flush=True)
            for backend, rates in kept_up.items():
                results["keeps_up_hz"][f"{modality} {backend}"] = max(rates, default=None)
                print(f"{modality:6s} {backend:11s} keeps up (>= {100 * KEEPS_UP:.0f} % answered) at "
                      + (f"{max(rates):g} Hz" if rates else "none of the rates tried"), flush=True)
    rclpy.shutdown()
    print(f"wrote {atomic_write_json(RESULTS, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
