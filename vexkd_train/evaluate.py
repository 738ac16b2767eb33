"""Evaluate a checkpoint on a split: the official nuScenes detection metrics (mAP, NDS, TP
errors via nuscenes-devkit), BEV map IoU per class (best over thresholds 0.35..0.65) and
mIoU, latency per stage and parameter count. Writes results.json and metrics.json.

A dataset without the map expansion download has no map ground truth: a model with a map
head is then scored on detection, and its map metrics are reported as skipped."""
from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.data.dataset import model_source
from vexkd_core.data.preprocess import Augmentation, map_targets
from vexkd_core.data.sample import without_sensor
from vexkd_core.geometry import matrix_yaw, yaw_to_quaternion
from vexkd_core.inference import load_predictor
from vexkd_core.io import atomic_npz, atomic_write_json, atomic_write_text
from vexkd_core.modalities import reads
from vexkd_core.structures import Boxes3D
from vexkd_core.timing import StageTimer

MAP_THRESHOLDS = tuple(round(0.35 + 0.05 * i, 2) for i in range(7))
VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
DEVKIT_MAX_BOXES = 500
MOVING_SPEED = 0.2  # m/s, as CenterPoint assigns attributes
MAP_COUNTS = "map_counts.npz"  # per-sample map IoU counts, beside metrics.json


def default_attribute(name: str, velocity: np.ndarray) -> str:
    moving = float(np.hypot(*velocity)) > MOVING_SPEED
    if name in VEHICLES:
        return "vehicle.moving" if moving else ("vehicle.stopped" if name == "bus" else "vehicle.parked")
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    return ""


def boxes_to_results(boxes: Boxes3D, lidar_to_global: np.ndarray, sample_token: str) -> list[dict]:
    """nuScenes result records (global frame) for boxes in the LiDAR frame."""
    heading = matrix_yaw(lidar_to_global)
    records = []
    for i in range(len(boxes)):
        centre = lidar_to_global[:3, :3] @ boxes.center[i] + lidar_to_global[:3, 3]
        velocity = lidar_to_global[:2, :2] @ boxes.velocity[i]
        name = DETECTION_CLASSES[int(boxes.label[i])]
        length, width, height = boxes.size_lwh[i]
        records.append({"sample_token": sample_token, "translation": centre.tolist(),
                        "size": [float(width), float(length), float(height)],
                        "rotation": yaw_to_quaternion(float(boxes.yaw[i] + heading)).tolist(),
                        "velocity": velocity.tolist(), "detection_name": name,
                        "detection_score": float(boxes.score[i]), "attribute_name": default_attribute(name, velocity)})
    return records


class MapIoU:
    """IoU per class and threshold, accumulated over a whole split (BEVFusion's protocol). The
    counts are kept per sample too (map_counts.npz), so that a part of the split can be scored
    without running the model again (vexkd_train.world_parts)."""

    def __init__(self):
        self.tokens: list[str] = []
        self.intersections: list[np.ndarray] = []  # per sample, (classes, thresholds)
        self.unions: list[np.ndarray] = []

    def add(self, probability: np.ndarray, target: np.ndarray, token: str) -> None:
        # Thresholds in the probability's own dtype: float32(0.35) >= 0.35 in float64 is False.
        thresholds = np.asarray(MAP_THRESHOLDS, dtype=probability.dtype)
        predicted = probability[:, None] >= thresholds[None, :, None, None]
        self.tokens.append(token)
        self.intersections.append((predicted & target[:, None]).sum(axis=(2, 3)))
        self.unions.append((predicted | target[:, None]).sum(axis=(2, 3)))

    def save(self, path: Path) -> None:
        shape = (len(self.tokens), len(MAP_CLASSES), len(MAP_THRESHOLDS))
        with atomic_npz(path) as add:
            add("tokens", np.array(self.tokens, dtype=str))
            add("intersection", np.array(self.intersections, dtype=np.int64).reshape(shape))
            add("union", np.array(self.unions, dtype=np.int64).reshape(shape))

    def summary(self) -> dict:
        shape = (len(MAP_CLASSES), len(MAP_THRESHOLDS))
        return map_summary(sum(self.intersections, np.zeros(shape)), sum(self.unions, np.zeros(shape)))


def map_summary(intersection: np.ndarray, union: np.ndarray) -> dict:
    """IoU per class at its best threshold and their mean, from counts summed over samples."""
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)
    best = iou.max(axis=1)
    return {"iou": {name: float(value) for name, value in zip(MAP_CLASSES, best)},
            "best_threshold": {name: MAP_THRESHOLDS[int(i)] for name, i in zip(MAP_CLASSES, iou.argmax(axis=1))},
            "mIoU": float(best.mean())}


def detection_metrics(nusc, results: dict, split: str, out_dir: Path) -> dict:
    """The official nuScenes detection evaluation; an empty prediction set scores zero."""
    if not any(results.values()):
        return {"mAP": 0.0, "NDS": 0.0, "per_class_ap": dict.fromkeys(DETECTION_CLASSES, 0.0), "tp_errors": {},
                "note": "no detections: scored 0 without running the devkit (it cannot evaluate an empty set)"}
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    result_path = out_dir / "results.json"
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path), split,
                               str(out_dir / "devkit"), verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics, _ = evaluation.evaluate()
    return devkit_summary(metrics)


def devkit_summary(metrics) -> dict:
    """The devkit's DetectionMetrics as this project reports them."""
    summary = metrics.serialize()
    return {"mAP": summary["mean_ap"], "NDS": summary["nd_score"], "per_class_ap": summary["mean_dist_aps"],
            "tp_errors": summary["tp_errors"]}


def evaluate(checkpoint: Path, dataroot: Path, version: str, split: str, out_dir: Path, device: str = "cpu",
             progress: bool = True, save_maps: bool = False, drop_sensor: str | None = None,
             backend: str = "torch") -> dict:
    """Metrics of a checkpoint on a split; `save_maps` also writes maps.npz (token -> map
    probability); `drop_sensor` ('lidar' or 'camera') evaluates with that sensor missing;
    `backend` onnxruntime evaluates an exported graph (`checkpoint` is then its .onnx)."""
    predictor = load_predictor(checkpoint, backend, device)
    config, modality = predictor.config, predictor.modality
    if drop_sensor is not None and not (reads(modality, "lidar") and reads(modality, "camera")):
        raise ValueError(f"--drop-sensor is for a fusion model; {checkpoint} is a {modality} model")
    source = model_source(dataroot, version, split, config, False)
    timer, map_iou, results = StageTimer(), MapIoU(), {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # Maps go to disk as they come: a nuScenes val split's would take gigabytes of memory.
        save_map = stack.enter_context(atomic_npz(out_dir / "maps.npz")) if save_maps else None
        for index in tqdm(range(len(source)), desc=f"eval {modality}", unit="sample",
                          disable=not progress):
            sample = source.sample(index)
            if drop_sensor is not None:
                sample = without_sensor(sample, drop_sensor)
            prediction = predictor(sample, timer)
            if prediction.boxes is not None:
                # The devkit refuses more than 500 boxes per sample: keep the best 500.
                best = sorted(boxes_to_results(prediction.boxes, sample.lidar_to_global, sample.token),
                              key=lambda record: -record["detection_score"])
                results[sample.token] = best[:DEVKIT_MAX_BOXES]
            if prediction.map_probability is not None:
                if sample.map_masks is not None:
                    map_iou.add(prediction.map_probability, _map_target(sample, config), sample.token)
                if save_map is not None:
                    save_map(sample.token, prediction.map_probability.astype(np.float16))
    tasks = config.train.task_names
    # A dataset without the map expansion scores a map head's detection alone.
    maps_skipped = source.maps_missing if "segmentation" in tasks else None
    if "segmentation" in tasks and maps_skipped is None:
        map_iou.save(out_dir / MAP_COUNTS)
    if "detection" in tasks:
        atomic_write_text(out_dir / "results.json", json.dumps({"meta": {
            "use_camera": reads(modality, "camera") and drop_sensor != "camera",
            "use_lidar": reads(modality, "lidar") and drop_sensor != "lidar",
            "use_radar": False, "use_map": False, "use_external": False}, "results": results}))
    metrics = {
        "checkpoint": str(checkpoint), "modality": modality, "split": split, "samples": len(source),
        "drop_sensor": drop_sensor, "tasks": config.train.tasks,
        # None for a task the model was not trained for (train.tasks)
        "detection": detection_metrics(source.nusc, results, split, out_dir) if "detection" in tasks else None,
        "map": map_iou.summary() if "segmentation" in tasks and maps_skipped is None else None,
        "map_skipped": maps_skipped,  # why a map head's metrics are missing
        "training_data": predictor.trained_on,
        "latency_ms": _latency_ms(timer),
        "parameters": predictor.parameters,
        "device": device, "backend": predictor.describe(),
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _map_target(sample, config) -> np.ndarray:
    """The ground-truth map on the model's map grid, as training sees it without augmentation."""
    return map_targets(sample, Augmentation(), config.map_grid.bev).numpy() > 0.5


def _latency_ms(timer: StageTimer) -> dict[str, float]:
    """Median per stage; `total` is preprocess + infer + postprocess of the same samples."""
    latency = {stage: 1e3 * statistics.median(values) for stage, values in timer.seconds.items()}
    totals = [sum(stages) for stages in zip(*(timer.seconds[s] for s in ("preprocess", "infer", "postprocess")))]
    latency["total"] = 1e3 * statistics.median(totals)
    return latency


def metrics_table(metrics: dict) -> str:
    detection, segmentation = metrics["detection"], metrics["map"]
    lines = [f"{metrics['modality']} model on {metrics['split']} ({metrics['samples']} samples, "
             f"{metrics['parameters'] / 1e6:.2f} M parameters)", f"  {metrics['training_data']}"]
    if detection is not None:
        lines += [f"  detection  mAP {detection['mAP']:.4f}  NDS {detection['NDS']:.4f}",
                  "  AP per class: " + ", ".join(f"{k} {v:.3f}" for k, v in detection["per_class_ap"].items())]
    if segmentation is not None:
        lines += [f"  map        mIoU {segmentation['mIoU']:.4f}",
                  "  IoU per class: " + ", ".join(f"{k} {v:.3f}" for k, v in segmentation["iou"].items())]
    if metrics["map_skipped"] is not None:
        lines.append(f"  map        metrics skipped: {metrics['map_skipped']}")
    lines.append("  latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["latency_ms"].items()))
    return "\n".join(lines)
