"""What a nuScenes-layout world's key frames look like to the sensors, beside one real
nuScenes key frame: the figures issue #32 compared (height of the scan, its range, the ego's
own returns, intensity inside boxes by class, box lengths, camera timing and image
statistics at 256 px). Read through nuscenes-devkit, so it measures real nuScenes and the
synthetic world alike.

    python tools/world_statistics.py demo/world other/world --out docs/synthetic_world.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.io import atomic_write_json

# nuScenes v1.0-mini, scene-0061's first key frame, measured with the same code (issue #32);
# brightness, contrast and sharpness were compared there only as ratios, so they are absent.
REAL_KEY_FRAME = {"returns": 34688, "z_p95_sensor_m": 3.96, "max_range_m": 101.0, "returns_within_1m": 8220,
                  "returns_1_to_2m": 306, "longest_truck_m": 10.2}


def key_frame_statistics(dataroot: Path, version: str, every: int) -> dict:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    with contextlib.redirect_stdout(io.StringIO()):
        nusc = NuScenes(version, str(dataroot), verbose=False)
    returns, z_p95, max_range, near, next_to, images = [], [], [], [], [], defaultdict(list)
    intensity, offsets_ms = defaultdict(list), defaultdict(list)
    for sample in nusc.sample[::every]:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        path, boxes, _ = nusc.get_sample_data(lidar["token"])
        points = LidarPointCloud.from_file(path).points
        distance = np.linalg.norm(points[:3], axis=0)
        returns.append(points.shape[1])
        z_p95.append(np.percentile(points[2], 95))
        max_range.append(distance.max())
        near.append(int((distance < 1.0).sum()))
        next_to.append(int(((distance >= 1.0) & (distance < 2.0)).sum()))
        for box in boxes:
            name = category_to_detection_name(nusc.get("sample_annotation", box.token)["category_name"])
            inside = points_in_box(box, points[:3])
            if name and inside.any():
                intensity[name].append(points[3, inside])
        for channel in CAMERA_CHANNELS:
            camera = nusc.get("sample_data", sample["data"][channel])
            offsets_ms[channel].append((camera["timestamp"] - lidar["timestamp"]) / 1e3)
            image = cv2.imread(str(dataroot / camera["filename"]), cv2.IMREAD_GRAYSCALE)
            small = cv2.resize(image, (256, round(256 * image.shape[0] / image.shape[1])),
                               interpolation=cv2.INTER_LINEAR).astype(np.float64)
            images["brightness"].append(small.mean())
            images["contrast"].append(small.std())
            images["sharpness"].append(cv2.Laplacian(small, cv2.CV_64F).var())
    lengths = defaultdict(list)
    for annotation in nusc.sample_annotation:
        name = category_to_detection_name(annotation["category_name"])
        if name:
            lengths[name].append(annotation["size"][1])
    return {
        "key_frames": len(z_p95),
        "returns": round(float(np.mean(returns))),
        "z_p95_sensor_m": round(float(np.mean(z_p95)), 2),
        "max_range_m": round(float(np.mean(max_range)), 1),
        "returns_within_1m": round(float(np.mean(near))),
        "returns_1_to_2m": round(float(np.mean(next_to))),
        "longest_truck_m": round(float(max(lengths["truck"], default=0.0)), 1),
        "longest_length_m": {name: round(float(max(values)), 1) for name, values in sorted(lengths.items())},
        "intensity_in_boxes": {name: round(float(np.concatenate(values).mean()), 1)
                               for name, values in sorted(intensity.items())},
        "camera_minus_lidar_ms": {channel: round(float(np.mean(values)), 1) for channel, values in offsets_ms.items()},
        "image_at_256px": {name: round(float(np.mean(values)), 1) for name, values in images.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroots", nargs="+", type=Path, help="nuScenes-layout worlds to measure (keyed by folder name)")
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--every", type=int, default=4, help="measure every n-th key frame")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    for dataroot in args.dataroots:
        if not (dataroot / args.version).is_dir():
            parser.error(f"{dataroot} holds no {args.version}/ tables")
    figures = {"real_nuscenes_key_frame": REAL_KEY_FRAME}
    for dataroot in args.dataroots:
        figures[dataroot.name] = key_frame_statistics(dataroot, args.version, args.every)
        print(dataroot, json.dumps(figures[dataroot.name], indent=1))
    if args.out:
        atomic_write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
