"""Cost of the message conversions the nodes do per frame.

A 35k-point nuScenes-like cloud (x, y, z, intensity, ring), a 1600x900 camera frame, and
the outputs of one frame with 200 boxes (a model's max_detections at a low threshold) and
six map grids. The box messages are written serialized (vexkd_ros.cdr): their figures include
what rclpy's serialisation cost on top of building Python messages before. Prints ms per
message (median of repeats) and whether the read path copies the data,
and records bench/results/conversions.json.
"""
from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vexkd_core.classes import DETECTION_CLASSES  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402
from vexkd_core.structures import BEVGrid, Boxes3D  # noqa: E402
from vexkd_ros import box_messages  # noqa: E402
from vexkd_ros import conversions as conv  # noqa: E402
from vexkd_ros.autoware import boxes_to_detected_objects  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "conversions.json"


def median_ms(function, repeats: int = 30) -> float:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def copies(result: np.ndarray, buffer) -> int:
    return 0 if np.shares_memory(result, np.frombuffer(buffer, np.uint8)) else 1


def main() -> None:
    rng = np.random.default_rng(0)
    n = 35_000
    columns = conv.structured_points(
        x=rng.uniform(-50, 50, n).astype(np.float32), y=rng.uniform(-50, 50, n).astype(np.float32),
        z=rng.uniform(-2, 5, n).astype(np.float32), intensity=rng.uniform(0, 255, n).astype(np.float32),
        ring=rng.integers(0, 32, n).astype(np.uint16))
    header = Header(frame_id="LIDAR_TOP")
    cloud = deserialize_message(serialize_message(conv.array_to_cloud(columns, header)), PointCloud2)
    rgb = rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8)
    image = deserialize_message(serialize_message(conv.rgb_to_image(rgb, header)), Image)
    image_bgr = deserialize_message(serialize_message(conv.rgb_to_image(rgb, header, "bgr8")), Image)
    jpeg = conv.rgb_to_compressed(rgb, header, "jpeg")
    boxes = Boxes3D(rng.uniform(-40, 40, (200, 3)), rng.uniform(1, 4, (200, 3)), rng.uniform(-3, 3, 200),
                    rng.uniform(-1, 1, (200, 2)), rng.integers(0, len(DETECTION_CLASSES), 200), rng.uniform(0, 1, 200))
    grid = BEVGrid.centered(50.0, 1.0)
    probability = rng.random((grid.height, grid.width)).astype(np.float32)

    rows = [
        ("cloud 35k: numpy -> PointCloud2", median_ms(lambda: conv.array_to_cloud(columns, header)), None),
        ("cloud 35k: PointCloud2 -> structured view", median_ms(lambda: conv.cloud_to_array(cloud)),
         copies(conv.cloud_to_array(cloud), cloud.data)),
        ("cloud 35k: PointCloud2 -> (N, 5) float32", median_ms(lambda: conv.cloud_to_points(cloud)), 1),
        ("cloud 35k: rclpy serialize", median_ms(lambda: serialize_message(cloud)), None),
        ("image 1600x900: numpy -> Image rgb8", median_ms(lambda: conv.rgb_to_image(rgb, header), 10), None),
        ("image 1600x900: Image rgb8 -> HxWx3", median_ms(lambda: conv.image_to_rgb(image), 10),
         copies(conv.image_to_rgb(image), image.data)),
        ("image 1600x900: Image bgr8 -> HxWx3 RGB", median_ms(lambda: conv.image_to_rgb(image_bgr), 10),
         copies(conv.image_to_rgb(image_bgr), image_bgr.data)),
        ("image 1600x900: JPEG encode", median_ms(lambda: conv.rgb_to_compressed(rgb, header), 5), None),
        ("image 1600x900: JPEG decode", median_ms(lambda: conv.compressed_to_rgb(jpeg), 5), None),
        ("200 boxes -> Detection3DArray bytes", median_ms(lambda: box_messages.boxes_to_detections(
            boxes, DETECTION_CLASSES, header), 10), None),
        ("200 boxes -> Autoware DetectedObjects bytes", median_ms(lambda: boxes_to_detected_objects(
            boxes, DETECTION_CLASSES, header), 10), None),
        ("200 boxes -> MarkerArray bytes", median_ms(lambda: box_messages.boxes_to_markers(
            boxes, DETECTION_CLASSES, header), 5), None),
        ("200 boxes -> velocities PointCloud2", median_ms(lambda: box_messages.boxes_to_velocities(boxes, header)), None),
        ("six 100x100 maps -> OccupancyGrid", median_ms(lambda: [conv.probability_to_grid(probability, grid, header)
                                                                for _ in range(6)]), None),
    ]
    print(f"{'conversion':46s} {'ms/msg':>8s} {'copies':>6s}")
    for name, ms, copied in rows:
        print(f"{name:46s} {ms:8.3f} {'-' if copied is None else copied:>6}")
    atomic_write_json(RESULTS, {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "results": [{"conversion": name, "ms_per_message": round(ms, 4), "copies": copied}
                    for name, ms, copied in rows],
    })
    print(f"recorded {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
