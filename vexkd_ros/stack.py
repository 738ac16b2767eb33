"""`vexkd-ros stack`: the bag player and the detector nodes as separate processes, as
`ros2 launch` would start them, plus a monitor that records their outputs and summarises.

Children run in their own sessions and die with the stack (PR_SET_PDEATHSIG), so neither
Ctrl-C nor a killed stack leaves processes behind.
"""
from __future__ import annotations

import ctypes
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from rclpy.signals import SignalHandlerOptions
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64
from vision_msgs.msg import Detection3DArray

from vexkd_core.inference import model_file_backend, model_file_modality
from vexkd_core.classes import MAP_CLASSES
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.modalities import reads

from .bag import AtomicBagWriter, BagError
from .conversions import stamp_to_ns
from .detector_node import NODE_NAMES
from .environment import apply_default_ros_environment
from .node_outputs import AUTOWARE_OBJECTS_TOPIC, LATENCY_TOPIC, VELOCITIES_TOPIC
from .player import message_class, open_bag
from .scene_messages import LIDAR_TOPIC, camera_info_topic, image_topic

STARTUP_TIMEOUT_S = 120.0
DRAIN_S = 3.0  # after the bag ends, time for the last frames to come out
STOP_TIMEOUT_S = 10.0
TRIGGER_TOPIC = {"lidar": LIDAR_TOPIC, "fusion": LIDAR_TOPIC, "camera": image_topic(CAMERA_CHANNELS[0])}


@dataclass
class NodeSpec:
    modality: str
    checkpoint: Path
    backend: str = "torch"

    @property
    def name(self) -> str:
        return NODE_NAMES[self.modality]

    def command(self) -> list[str]:
        remaps = []
        if reads(self.modality, "lidar"):
            remaps += ["-r", f"~/input/pointcloud:={LIDAR_TOPIC}"]
        if reads(self.modality, "camera"):
            for index, channel in enumerate(CAMERA_CHANNELS):
                remaps += ["-r", f"~/input/image{index}:={image_topic(channel)}",
                           "-r", f"~/input/camera_info{index}:={camera_info_topic(channel)}"]
        return [sys.executable, "-m", "vexkd_ros.detector_node", self.modality, "--ros-args",
                "-p", f"checkpoint:={self.checkpoint}", "-p", f"backend:={self.backend}", *remaps]

    def output_topics(self) -> dict[str, type]:
        topics = {f"/{self.name}/output/objects": Detection3DArray,
                  f"/{self.name}/{VELOCITIES_TOPIC.removeprefix('~/')}": message_class("sensor_msgs/msg/PointCloud2")}
        topics.update({f"/{self.name}/output/map/{name}": message_class("nav_msgs/msg/OccupancyGrid")
                       for name in MAP_CLASSES})
        topics[f"/{self.name}/output/markers"] = message_class("visualization_msgs/msg/MarkerArray")
        topics[f"/{self.name}/{AUTOWARE_OBJECTS_TOPIC.removeprefix('~/')}"] = \
            message_class("autoware_perception_msgs/msg/DetectedObjects")
        topics[f"/{self.name}/{LATENCY_TOPIC.removeprefix('~/')}"] = \
            message_class("autoware_internal_debug_msgs/msg/Float64Stamped")
        return topics


@dataclass
class NodeCounts:
    frames_in: int
    stamps_out: list[int] = field(default_factory=list)
    processing_ms: list[float] = field(default_factory=list)


def node_specs(checkpoints: list[Path], modality: str) -> list[NodeSpec]:
    specs = []
    for path in checkpoints:
        found = model_file_modality(path)
        if modality in ("all", found):
            specs.append(NodeSpec(found, path, model_file_backend(path)))
    if not specs:
        raise BagError(f"no checkpoint of modality '{modality}' among {', '.join(map(str, checkpoints))}")
    if len({s.modality for s in specs}) != len(specs):
        raise BagError("give at most one checkpoint per modality")
    return specs


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the stack process dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Monitor(Node):
    """Counts and records what the detector nodes publish."""

    def __init__(self, specs: list[NodeSpec], frames_in: dict[str, int], writer: AtomicBagWriter | None):
        super().__init__("vexkd_stack_monitor")
        self.counts = {spec.name: NodeCounts(frames_in[spec.name]) for spec in specs}
        self.writer = writer
        qos = QoSProfile(depth=10)
        for spec in specs:
            self.create_subscription(Detection3DArray, f"/{spec.name}/output/objects",
                                     lambda m, n=spec.name: self.counts[n].stamps_out.append(stamp_to_ns(m.header.stamp)),
                                     qos)
            self.create_subscription(Float64, f"/{spec.name}/debug/processing_time_ms",
                                     lambda m, n=spec.name: self.counts[n].processing_ms.append(m.data), qos)
            if writer is not None:
                for topic, kind in spec.output_topics().items():
                    self.create_subscription(kind, topic, lambda data, t=topic, k=kind: self._record(t, k, data),
                                             qos, raw=True)

    def _record(self, topic: str, kind: type, data: bytes) -> None:
        self.writer.write(topic, time.time_ns(), data, message_class=kind)

    def ready(self, specs: list[NodeSpec]) -> bool:
        return all(self.count_publishers(f"/{s.name}/output/objects") > 0 for s in specs)


def summary(counts: dict[str, NodeCounts]) -> dict:
    def percentile(values: list[float], q: int) -> float | None:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) >= 2 else \
            (values[0] if values else None)

    return {name: {"frames_in": c.frames_in, "frames_out": len(c.stamps_out),
                   "dropped": c.frames_in - len(c.stamps_out),
                   "processing_ms": {f"p{q}": percentile(c.processing_ms, q) for q in (50, 90, 99)}}
            for name, c in counts.items()}


def summary_table(result: dict) -> str:
    lines = ["node              frames in  out  dropped  processing ms p50 / p90 / p99"]
    for name, row in result.items():
        ms = row["processing_ms"]
        text = " / ".join("-" if ms[k] is None else f"{ms[k]:.1f}" for k in ("p50", "p90", "p99"))
        lines.append(f"{name:17s} {row['frames_in']:9d} {row['frames_out']:4d} {row['dropped']:8d}  {text}")
    return "\n".join(lines)


def run_stack(bag: Path, checkpoints: list[Path], modality: str = "all", record: Path | None = None,
              rate: float = 1.0, storage: str = "mcap") -> dict:
    """Replay `bag` through the detector nodes; returns the summary (also printed)."""
    specs = node_specs(checkpoints, modality)
    reader = open_bag(bag)
    in_bag = {c.topic: c.msgcount for c in reader.connections}
    reader.close()
    missing = {TRIGGER_TOPIC[s.modality] for s in specs} - set(in_bag)
    if missing:
        raise BagError(f"{bag} lacks {', '.join(sorted(missing))}")
    frames_in = {s.name: in_bag[TRIGGER_TOPIC[s.modality]] for s in specs}
    apply_default_ros_environment()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C stays a KeyboardInterrupt here
    processes: list[subprocess.Popen] = []
    writer = AtomicBagWriter(record, storage).__enter__() if record is not None else None
    monitor = Monitor(specs, frames_in, writer)
    executor = SingleThreadedExecutor()
    executor.add_node(monitor)
    failed, interrupted = True, False
    try:
        processes += [_start(spec.command()) for spec in specs]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not monitor.ready(specs):
            executor.spin_once(timeout_sec=0.1)
            for process, spec in zip(processes, specs):
                if process.poll() is not None:
                    raise BagError(f"{spec.name} exited with code {process.returncode} while starting")
            if time.monotonic() > deadline:
                raise BagError(f"the detector nodes did not start within {STARTUP_TIMEOUT_S:.0f} s")
        wait_for = sorted({TRIGGER_TOPIC[s.modality] for s in specs})
        player = _start([sys.executable, "-m", "vexkd_ros.cli", "play", str(bag), "--rate", str(rate),
                         "--wait-for", *wait_for])
        processes.append(player)
        while player.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        if player.returncode != 0:
            raise BagError(f"the bag player exited with code {player.returncode}")
        drain_until = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_until:
            executor.spin_once(timeout_sec=0.1)
        failed = False
    except KeyboardInterrupt:  # the user stopped the replay: keep what was recorded, summarise it
        failed, interrupted = False, True
    finally:
        _stop(processes)
        if writer is not None:
            writer.__exit__(BagError if failed else None, None, None)
        rclpy.shutdown()
    result = summary(monitor.counts)
    print(summary_table(result) + ("\n(interrupted)" if interrupted else ""))
    return result
