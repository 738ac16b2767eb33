"""One sample in, boxes and map probabilities out: the inference path of `vexkd-train eval`
and of the ROS nodes, so the two cannot drift apart.

`Predictor` runs a torch model; `OnnxPredictor` (onnx_runtime.py) runs the exported graph
of one. Both share everything around the network: preprocessing, the weight-free network
inputs, decoding and thresholds. inference.load_predictor picks one for a model file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vexkd_core.config import Config
from vexkd_core.data.preprocess import Batch, collate, preprocess
from vexkd_core.data.sample import Sample
from vexkd_core.models.detection_head import decode_boxes
from vexkd_core.models.vexkd import network_outputs
from vexkd_core.structures import Boxes3D
from vexkd_core.timing import StageTimer
from vexkd_core.training_data import NOT_RECORDED


@dataclass
class PreparedInput:
    """A sample made ready for the network (Predictor.prepare): its batch and, for an exported
    graph, the graph's inputs already laid out; `infer_s`: the inference time spent on them
    (finish() counts it in the infer stage)."""
    batch: Batch
    graph_feed: dict[str, np.ndarray] | None = None
    infer_s: float = 0.0


@dataclass
class Prediction:
    boxes: Boxes3D | None  # in the sample's (key LiDAR) frame; None: the model does not detect (train.tasks)
    map_probability: np.ndarray | None  # (6, H, W) float32 on config.map_grid.bev, MAP_CLASSES order; None: no map


class Predictor:
    """A torch model in eval mode plus its config; stages are timed as preprocess, infer, postprocess."""

    def __init__(self, model: torch.nn.Module, config: Config, device: str = "cpu", trained_on: str = NOT_RECORDED):
        self.model, self.config, self.device = model.eval().to(device), config, device
        self.modality = model.modality
        self.parameters = sum(p.numel() for p in model.parameters())
        self.trained_on = trained_on  # training_data.training_data_line of the model file

    def describe(self) -> str:
        return f"torch on {self.device}"

    @torch.no_grad()
    def __call__(self, sample: Sample, timer: StageTimer | None = None,
                 score_threshold: float | None = None) -> Prediction:
        timer = timer if timer is not None else StageTimer()
        return self.finish(self.prepare(sample, timer), timer, score_threshold)

    # A node runs prepare() of the next frame while finish() runs the network on this one
    # (runtime.worker.TwoStageWorker): together they are __call__.
    @torch.no_grad()
    def prepare(self, sample: Sample, timer: StageTimer) -> PreparedInput:
        """What runs before the network: preprocessing (the exported graph's predictor also
        lays out the graph's inputs)."""
        inputs, _ = timer.measure("preprocess", preprocess, sample, self.config, on_device=False)
        return PreparedInput(collate([inputs]).to(self.device))

    @torch.no_grad()
    def finish(self, prepared: PreparedInput, timer: StageTimer, score_threshold: float | None = None) -> Prediction:
        outputs = timer.measure("infer", self.infer, prepared, timer)
        timer.seconds["infer"][-1] += prepared.infer_s  # the infer stage is the same whichever thread ran it
        return timer.measure("postprocess", self._postprocess, outputs, score_threshold)

    def infer(self, prepared: PreparedInput, timer: StageTimer) -> dict[str, torch.Tensor]:
        """The network's raw outputs by NETWORK_OUTPUTS name."""
        return network_outputs(self.model(prepared.batch, timer))

    def _postprocess(self, outputs: dict[str, torch.Tensor], score_threshold: float | None) -> Prediction:
        model = self.config.model
        threshold = model.score_threshold if score_threshold is None else score_threshold
        boxes = decode_boxes(outputs, self.config.grid.bev, model.max_detections, threshold)[0] \
            if "heatmap" in outputs else None
        probability = torch.sigmoid(outputs["map_logits"][0].float()).cpu().numpy() if "map_logits" in outputs \
            else None
        return Prediction(boxes, probability)
