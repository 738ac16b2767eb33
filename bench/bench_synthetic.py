"""Generation time and size of the demo's synthetic world, with what it contains.

Writes the world `make demo` uses (demo_config) into a temporary folder, times it as a
whole and per sensor frame, counts boxes per class and LiDAR points per sweep, prints a
table and records bench/results/synthetic.json.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vexkd_core.data.synthetic import demo_config, write_dataset  # noqa: E402
from vexkd_core.data.synthetic.scene_writer import render_camera, setup_scene  # noqa: E402
from vexkd_core.data.synthetic.lidar import LidarSpec, cast_sweep  # noqa: E402
from vexkd_core.data.synthetic.rig import MOUNT_BY_CHANNEL  # noqa: E402
from vexkd_core.data.synthetic.writer import _city, scene_jobs  # noqa: E402
from vexkd_core.geometry import quaternion_to_matrix  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic.json"


def per_frame_ms(config) -> tuple[float, float]:
    job = scene_jobs(config)[0]
    city = _city(job.location, job.seed)
    setup = setup_scene(job, city)
    _, translation, rotation, _ = setup.calibration["LIDAR_TOP"]
    started = time.perf_counter()
    for step in range(5):
        cast_sweep(city, setup.solids, setup.scenario.ego, translation, quaternion_to_matrix(rotation),
                   np.radians(MOUNT_BY_CHANNEL["LIDAR_TOP"].yaw_deg), 0.5 * step, setup.rng, LidarSpec())
    lidar_ms = (time.perf_counter() - started) / 5 * 1e3
    started = time.perf_counter()
    for step in range(5):
        render_camera(setup, city, job, "CAM_FRONT", job.start_us + step * 500_000)
    return lidar_ms, (time.perf_counter() - started) / 5 * 1e3


def main() -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    with tempfile.TemporaryDirectory(prefix="vexkd-bench-world-") as folder:
        config = demo_config(Path(folder) / "world", workers=os.cpu_count() or 1)
        started = time.monotonic()
        counts = write_dataset(config, progress=False)
        seconds = time.monotonic() - started
        size_mb = sum(p.stat().st_size for p in config.out.rglob("*") if p.is_file()) / 2**20
        with contextlib.redirect_stdout(io.StringIO()):
            nusc = NuScenes(config.version, str(config.out), verbose=False)
        per_class = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
        per_class.pop(None, None)
        lidar_files = [config.out / r["filename"] for r in nusc.sample_data if r["channel"] == "LIDAR_TOP"]
        points = [p.stat().st_size // 20 for p in lidar_files]
        with_points = sum(a["num_lidar_pts"] > 0 for a in nusc.sample_annotation)
        lidar_ms, camera_ms = per_frame_ms(config)
    figures = {
        "config": {"scenes": config.scenes, "val_scenes": config.val_scenes, "samples_per_scene": config.samples_per_scene,
                   "sweeps": config.sweeps, "camera_sweeps": config.camera_sweeps,
                   "image_size": list(config.image_size), "workers": config.workers},
        "seconds": round(seconds, 1), "size_mb": round(size_mb, 1), **counts,
        "annotations_with_lidar_points": with_points,
        "boxes_per_class": dict(sorted(per_class.items())),
        "points_per_sweep": {"mean": int(np.mean(points)), "min": int(np.min(points)), "max": int(np.max(points))},
        "lidar_sweep_ms": round(lidar_ms, 1), "camera_frame_ms": round(camera_ms, 1),
    }
    print(f"demo world: {counts['scenes']} scenes, {counts['samples']} samples, {counts['sample_data']} sample_data, "
          f"{counts['annotations']} boxes in {seconds:.0f} s, {size_mb:.0f} MB ({config.workers} workers)")
    print(f"per frame: LiDAR sweep {lidar_ms:.0f} ms, camera image {camera_ms:.0f} ms at "
          f"{config.image_size[0]}x{config.image_size[1]}")
    print(f"points per sweep: mean {figures['points_per_sweep']['mean']}, "
          f"boxes with LiDAR points: {with_points}/{counts['annotations']}")
    print("boxes per class: " + ", ".join(f"{k} {v}" for k, v in figures["boxes_per_class"].items()))
    atomic_write_json(RESULTS, figures)
    print(f"recorded {RESULTS}")


if __name__ == "__main__":
    main()
