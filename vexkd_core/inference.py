"""One sample in, boxes and map probabilities out: the inference path of `vexkd-train eval`
and of the ROS nodes, so the two cannot drift apart."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vexkd_core.config import Config
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.data.sample import Sample
from vexkd_core.timing import StageTimer
from vexkd_core.structures import Boxes3D


@dataclass
class Prediction:
    boxes: Boxes3D | None  # in the sample's (key LiDAR) frame; None: the model does not detect (train.tasks)
    map_probability: np.ndarray | None  # (6, H, W) float32 on config.map_grid.bev, MAP_CLASSES order; None: no map


class Predictor:
    """A model in eval mode plus its config; stages are timed as preprocess, infer, postprocess."""

    def __init__(self, model: torch.nn.Module, config: Config, device: str = "cpu"):
        self.model, self.config, self.device = model.eval().to(device), config, device

    @torch.no_grad()
    def __call__(self, sample: Sample, timer: StageTimer | None = None,
                 score_threshold: float | None = None) -> Prediction:
        timer = timer if timer is not None else StageTimer()
        inputs, _ = timer.measure("preprocess", preprocess, sample, self.config)
        batch = collate([inputs]).to(self.device)
        output = timer.measure("infer", self.model, batch, timer)
        return timer.measure("postprocess", self._postprocess, output, score_threshold)

    def _postprocess(self, output, score_threshold: float | None) -> Prediction:
        threshold = self.config.model.score_threshold if score_threshold is None else score_threshold
        heads = self.model.heads
        boxes = heads.detection_head.decode(output.detection, self.config.model.max_detections, threshold)[0] \
            if heads.detection_head else None
        probability = torch.sigmoid(output.map_logits[0].float()).cpu().numpy() if heads.map_head else None
        return Prediction(boxes, probability)
