"""The detector's pipeline on a rig without ROS, shared by the pipeline, trigger-gate and
distortion tests: stamps, a standing-still TF, node settings, a tiny random-weight pipeline,
LiDAR sweeps and camera frames."""
import numpy as np
import torch

from vexkd_core.classes import MAP_CLASSES
from vexkd_core.config import load_config
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.data.sensor_files import reduce_image
from vexkd_core.models.vexkd import build_model
from vexkd_core.predictor import Predictor
from vexkd_core.runtime.node_inputs import CameraFrame, Sweep
from vexkd_core.runtime.pipeline import Pipeline
from vexkd_core.runtime.settings import DetectorSettings

SECOND = 1_000_000_000
T0 = 1_533_151_603 * SECOND


class StandingStill:
    """A rig whose every frame is the same place at all times; `known` limits which frames TF knows."""

    def __init__(self, known=("map", "LIDAR_TOP", *CAMERA_CHANNELS)):
        self.known = set(known)

    def can_transform(self, target, source, stamp_ns):
        return {target, source} <= self.known

    def lookup_across_time(self, target, target_ns, source, source_ns, fixed):
        if not {target, source, fixed} <= self.known:
            raise LookupError(f"no transform {target} <- {source}")
        return np.eye(4)


def settings(**overrides) -> DetectorSettings:
    values = dict(checkpoint="model.pt", backend="torch", device="cpu", score_threshold=-1.0, class_score_thresholds={},
                  max_camera_delay=0.12, sweeps=-1, map_classes=MAP_CLASSES, publish_markers=True,
                  marker_score_threshold=0.3, image_transport="compressed", fixed_frame="map", bev_frame="LIDAR_TOP",
                  tf_timeout=0.2)
    values.update(overrides)
    return DetectorSettings(**values)


def pipeline(modality="lidar", tasks="both", tf=None) -> Pipeline:
    config = load_config("tiny", ["model.lidar.sweeps=2", "model.score_threshold=0.0", f"train.tasks={tasks}"])
    torch.manual_seed(0)
    return Pipeline(Predictor(build_model(config, modality), config), modality, -1, tf or StandingStill())


def sweep(stamp_ns: int, n: int = 3000, frame: str = "LIDAR_TOP") -> Sweep:
    rng = np.random.default_rng(stamp_ns % 997)
    points = np.column_stack([rng.uniform(-40, 40, (n, 2)), rng.uniform(-2, 2, n), rng.uniform(0, 100, n)])
    return Sweep(stamp_ns, frame, points.astype(np.float32))


def camera_frame(index: int, stamp_ns: int, size=(320, 180)) -> CameraFrame:
    image = np.full((size[1], size[0], 3), 40 * index, np.uint8)
    return CameraFrame(stamp_ns, CAMERA_CHANNELS[index], size, lambda reduction: reduce_image(image, reduction))
