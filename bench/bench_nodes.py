"""Per-stage latency of the LiDAR and camera detector nodes on CPU, `tiny` and `nuscenes`
presets, torch and onnxruntime backends (the float graph and its int8 quantisation); the ROS
overhead (message conversion + publishing) as a share of model time; onnxruntime's latency
over torch's, and the float graph's over the int8 one's, per model and preset.

Runs the real DetectorNode in this process on nuScenes-sized inputs: a 34,720-point cloud
per sweep with the preset's past sweeps through TF, six 1600x900 JPEGs of ~0.3 MB (a smooth
scene with sensor noise). Random-weight checkpoints: every frame carries max_detections
(200) boxes, as the demo's trained students do at their checkpoint's score threshold
(0.05) on every val sample, so publishing costs what it would. The worker thread is stopped
and each frame goes through the node's callbacks, its pipeline and its publishers in the
foreground, so every frame is timed. Records
bench/results/nodes.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from vexkd_core.checkpoint import save_checkpoint  # noqa: E402
from vexkd_core.config import preset  # noqa: E402
from vexkd_core.data.sample import CAMERA_CHANNELS  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.modalities import reads  # noqa: E402
from vexkd_core.models.vexkd import build_model  # noqa: E402
from vexkd_core.onnx_export import export_onnx  # noqa: E402
from vexkd_core.onnx_quantize import Calibration, export_int8  # noqa: E402
from vexkd_ros.conversions import (array_to_cloud, intrinsics_to_camera_info, matrices_to_tf_message,  # noqa: E402
                                   ns_to_stamp, rgb_to_compressed, structured_points)
from vexkd_ros.detector_node import DetectorNode  # noqa: E402
from vexkd_ros.node_outputs import STAGES  # noqa: E402
from vexkd_ros.environment import apply_default_ros_environment, single_threaded_blas  # noqa: E402
from bench_data_loading import VERSION  # noqa: E402
from bench_training_memory import preset_world  # noqa: E402

RESULTS = REPO / "bench" / "results" / "nodes.json"
# Backends as this benchmark names them -> the node's `backend` parameter (int8: an int8 graph).
NODE_BACKEND = {"torch": "torch", "onnxruntime": "onnxruntime", "int8": "onnxruntime"}
POINTS_PER_SWEEP = 34_720  # nuScenes LIDAR_TOP average
SWEEP_PERIOD_NS = 50_000_000


def cloud(stamp_ns: int, seed: int):
    rng = np.random.default_rng(seed)
    r = rng.uniform(2, 60, POINTS_PER_SWEEP)
    angle = rng.uniform(-np.pi, np.pi, POINTS_PER_SWEEP)
    columns = dict(x=(r * np.cos(angle)).astype(np.float32), y=(r * np.sin(angle)).astype(np.float32),
                   z=rng.uniform(-2, 1, POINTS_PER_SWEEP).astype(np.float32),
                   intensity=rng.uniform(0, 100, POINTS_PER_SWEEP).astype(np.float32),
                   ring=rng.integers(0, 32, POINTS_PER_SWEEP).astype(np.uint16))
    return array_to_cloud(structured_points(**columns), Header(stamp=ns_to_stamp(stamp_ns), frame_id="LIDAR_TOP"))


def camera_images(stamp_ns: int) -> list[CompressedImage]:
    """Six JPEGs the size of nuScenes' (a smooth scene with sensor noise, ~0.3 MB each, not
    incompressible random pixels)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (9, 16, 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (1600, 900), interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    return [rgb_to_compressed(noisy, Header(stamp=ns_to_stamp(stamp_ns), frame_id=c)) for c in CAMERA_CHANNELS]


def feed_rig(node: DetectorNode, stamps: list[int]) -> None:
    """A vehicle standing still: static sensors, map -> base_link at every stamp, camera calibration."""
    static = [("base_link", name, np.eye(4), ns_to_stamp(0)) for name in ("LIDAR_TOP", *CAMERA_CHANNELS)]
    node.tf.add(matrices_to_tf_message(static), static=True)
    node.tf.add(matrices_to_tf_message([("map", "base_link", np.eye(4), ns_to_stamp(s)) for s in stamps]), static=False)
    k = np.array([[1266.0, 0, 816], [0, 1266.0, 491], [0, 0, 1]])
    for index, channel in enumerate(CAMERA_CHANNELS):
        node._on_camera_info(index, intrinsics_to_camera_info(k, 1600, 900, Header(frame_id=channel)))


def model_files(modality: str, preset_name: str, folder: Path, int8: bool = False) -> dict[str, Path]:
    """{backend: file} of one random-weight model: its checkpoint, its exported graph and, with
    `int8`, that graph quantised (`vexkd-train export --quantize int8`'s recipe, calibrated on a
    synthetic world of the preset's image size; no fidelity bounds: these weights are random)."""
    config = preset(preset_name)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / f"{modality}-{preset_name}.pt", build_model(config, modality), config,
                                 modality)
    files = {"torch": checkpoint, "onnxruntime": export_onnx(checkpoint, folder).onnx_path}
    if int8:
        files["int8"] = export_int8(files["onnxruntime"], Calibration(preset_world(preset_name), VERSION, 8),
                                    bounds={}).onnx_path
    return files


def measure(modality: str, model_file: Path, backend: str, repeats: int) -> dict:
    threads = torch.get_num_threads()  # an onnxruntime node sets torch to one thread for the process
    try:
        return _measure(modality, model_file, backend, repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(modality: str, model_file: Path, backend: str, repeats: int) -> dict:
    node = DetectorNode(modality, parameter_overrides=[Parameter("checkpoint", value=str(model_file)),
                                                       Parameter("backend", value=NODE_BACKEND[backend])])
    node.stop()  # frames are processed in the foreground below, every one timed
    outputs = node.outputs  # every output subscribed (a tracker, RViz, a recorder): its messages are all built
    for publisher in [outputs.objects, outputs.velocities, outputs.autoware, outputs.markers, *outputs.maps.values()]:
        node.create_subscription(publisher.msg_type, publisher.topic_name, lambda m: None, 1)
    sweeps = node.pipeline.sweeps.sweeps
    stamps = [k * SWEEP_PERIOD_NS + 10**9 for k in range(sweeps + repeats + 2)]
    feed_rig(node, stamps)
    jpeg = camera_images(0)
    rows = []
    for k, stamp in enumerate(stamps):
        for index, image in enumerate(jpeg):
            image.header.stamp = ns_to_stamp(stamp)
            node._on_image(index, image)  # the camera node's image 0 is its trigger
        if reads(modality, "lidar"):
            node._on_cloud(cloud(stamp, k))
        trigger, node.worker.preparing._pending = node.worker.preparing._pending, None
        result = node.pipeline.run(trigger, node.settings)
        if k > sweeps and not result.skipped:  # warm: full sweep history, allocator settled
            rows.append(node.outputs.publish(result, node.settings, trigger.arrived_s)[0])
    node.destroy_node()
    median = {stage: statistics.median(r[stage] for r in rows) for stage in STAGES}
    model_ms = median["preprocess"] + median["infer"] + median["postprocess"]
    return {"stages_ms": median, "total_ms": sum(median.values()), "model_ms": model_ms,
            "ros_overhead_share": (median["convert"] + median["publish"]) / model_ms, "frames": len(rows),
            "past_sweeps": sweeps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["tiny", "nuscenes"])
    parser.add_argument("--backends", nargs="+", choices=tuple(NODE_BACKEND), default=list(NODE_BACKEND))
    args = parser.parse_args()
    apply_default_ros_environment()
    single_threaded_blas()  # as a node process has it (detector_node.run)
    rclpy.init()
    results = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
               "nodes": {}, "onnxruntime_over_torch": {}, "float_over_int8": {}}
    with tempfile.TemporaryDirectory() as folder:
        for preset_name in args.presets:
            for modality in ("lidar", "camera"):
                files = model_files(modality, preset_name, Path(folder), "int8" in args.backends)
                for backend in args.backends:
                    row = measure(modality, files[backend], backend, args.repeats)
                    results["nodes"][f"{modality} {preset_name} {backend}"] = row
                    stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages_ms"].items())
                    print(f"{modality:6s} {preset_name:8s} {backend:11s} total {row['total_ms']:8.1f} ms  ({stages})  "
                          f"ROS overhead {100 * row['ros_overhead_share']:.1f}% of model time", flush=True)
                if set(args.backends) >= {"torch", "onnxruntime"}:
                    torch_row, onnx_row = (results["nodes"][f"{modality} {preset_name} {b}"]
                                           for b in ("torch", "onnxruntime"))
                    ratio = {"infer": onnx_row["stages_ms"]["infer"] / torch_row["stages_ms"]["infer"],
                             "model": onnx_row["model_ms"] / torch_row["model_ms"],
                             "total": onnx_row["total_ms"] / torch_row["total_ms"]}
                    results["onnxruntime_over_torch"][f"{modality} {preset_name}"] = ratio
                    print(f"{modality:6s} {preset_name:8s} onnxruntime / torch: infer {ratio['infer']:.2f}, "
                          f"model {ratio['model']:.2f}, node total {ratio['total']:.2f}", flush=True)
                if set(args.backends) >= {"onnxruntime", "int8"}:
                    float_row, int8_row = (results["nodes"][f"{modality} {preset_name} {b}"]
                                           for b in ("onnxruntime", "int8"))
                    ratio = {"infer": float_row["stages_ms"]["infer"] / int8_row["stages_ms"]["infer"],
                             "total": float_row["total_ms"] / int8_row["total_ms"]}
                    results["float_over_int8"][f"{modality} {preset_name}"] = ratio
                    print(f"{modality:6s} {preset_name:8s} float32 / int8 graph: infer {ratio['infer']:.2f}x, "
                          f"node total {ratio['total']:.2f}x", flush=True)
    rclpy.shutdown()
    atomic_write_json(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
