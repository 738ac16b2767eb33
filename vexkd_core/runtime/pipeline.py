"""The detector's work between a trigger and its outputs, with no ROS in it (Autoware's split
of a node into a thin ROS adapter and a core): typed inputs in, a typed result out.

The adapter files sweeps, camera frames and calibrations here as they arrive and hands over
a `Trigger`; `run` assembles the same `Sample` the dataset reader builds (past sweeps and
cameras placed through TF), calls the `Predictor` of `vexkd-train eval`, applies the
thresholds and returns boxes, maps, notes (what was left out and why) and stage times.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from vexkd_core.classes import MAP_CLASSES
from vexkd_core.data.sample import Sample
from vexkd_core.data.sweeps import without_ego_points
from vexkd_core.modalities import reads
from vexkd_core.predictor import PreparedInput, Predictor
from vexkd_core.structures import BEVGrid, Boxes3D
from vexkd_core.timing import StageTimer

from .node_inputs import Calibration, CameraCache, CameraFrame, Sweep, SweepHistory, Transforms
from .settings import DetectorSettings

MODEL_STAGES = ("convert", "preprocess", "infer", "postprocess")


@dataclass(frozen=True)
class Trigger:
    stamp_ns: int
    frame_id: str  # the triggering sensor's frame
    sweep: Sweep | None  # a LiDAR trigger's own sweep (already added); None: the camera node's trigger
    convert_s: float = 0.0  # what the adapter spent converting the trigger message
    arrived_s: float = field(default_factory=time.monotonic)  # when the adapter made it (steady clock)


@dataclass
class Result:
    stamp_ns: int
    frame_id: str  # of every output: the trigger sweep's frame, or bev_frame for the camera node
    notes: list[str]  # inputs left out and why, one line each
    skipped: bool = False  # the model did not run (the notes say why)
    boxes: Boxes3D | None = None  # above the thresholds; None: skipped or the model does not detect
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # class -> [y, x] probability on `grid`
    grid: BEVGrid | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)  # MODEL_STAGES
    # What the infer stage is made of, the backend's own parts: the network inputs, the graph's
    # layout and run (onnxruntime), or the network's modules (torch). Where inference time goes
    # in a node, beside other threads and processes, differs from a quiet process.
    infer_parts_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedTrigger:
    """A trigger made ready for the network (Pipeline.prepare), with what finish() needs."""
    trigger: Trigger
    settings: DetectorSettings
    reference: str  # the outputs' frame
    notes: list[str]
    timer: StageTimer
    model_input: PreparedInput


class Pipeline:
    def __init__(self, predictor: Predictor, modality: str, sweeps: int, tf: Transforms):
        """`sweeps`: past sweeps to accumulate; -1: as many as the model was trained with."""
        self.predictor, self.modality, self.tf = predictor, modality, tf
        self.config = predictor.config
        self.sweeps = SweepHistory(self.config.model.lidar.sweeps if sweeps < 0 else sweeps)
        self.cameras = CameraCache(self.config.model.camera.input_width)

    @property
    def detects(self) -> bool:
        return "detection" in self.config.train.task_names

    def resolve(self, settings: DetectorSettings) -> DetectorSettings:
        """Settings with score_threshold -1 replaced by the checkpoint's own, and without the
        outputs of a task the model was not trained for (train.tasks)."""
        if settings.score_threshold < 0:
            settings = replace(settings, score_threshold=self.config.model.score_threshold)
        if "segmentation" not in self.config.train.task_names:
            settings = replace(settings, map_classes=())
        if not self.detects:
            settings = replace(settings, publish_markers=False)
        return settings

    def ready(self, trigger: Trigger, settings: DetectorSettings, waited_s: float) -> bool:
        """Whether a held trigger may run (the node holds it until then, TriggerGate): /tf knows
        its frame at its stamp, or it has waited tf_timeout; and each camera's frame nearest
        its stamp has arrived, or it has waited max_camera_delay."""
        return self._transform_ready(trigger, settings, waited_s) and self._cameras_ready(trigger, settings, waited_s)

    def _transform_ready(self, trigger: Trigger, settings: DetectorSettings, waited_s: float) -> bool:
        return not self._needs_transform() or waited_s >= settings.tf_timeout or \
            self.tf.can_transform(settings.fixed_frame, self._reference(trigger, settings), trigger.stamp_ns)

    def _cameras_ready(self, trigger: Trigger, settings: DetectorSettings, waited_s: float) -> bool:
        return not reads(self.modality, "camera") or waited_s >= settings.max_camera_delay or \
            self.cameras.all_settled(trigger.stamp_ns, int(settings.max_camera_delay * 1e9))

    def _needs_transform(self) -> bool:
        """Past sweeps and cameras off the trigger time are placed through TF."""
        return self.sweeps.sweeps > 0 or reads(self.modality, "camera")

    @staticmethod
    def _reference(trigger: Trigger, settings: DetectorSettings) -> str:
        return trigger.frame_id if trigger.sweep is not None else settings.bev_frame

    def add_sweep(self, sweep: Sweep) -> tuple[Sweep | None, list[str]]:
        """(the sweep as kept, to trigger with: without the ego's own returns; None: it cannot
        trigger, notes). Non-finite points are only counted here: preprocess() drops them, for
        the dataset path and this one alike."""
        finite = int(np.isfinite(sweep.points).all(axis=1).sum())
        notes = [] if finite == len(sweep.points) else \
            [f"{len(sweep.points) - finite} of {len(sweep.points)} points are NaN/inf; they are dropped"]
        if finite == 0:
            return None, notes + ["point cloud skipped: it has no (finite) points"]
        kept = replace(sweep, points=without_ego_points(sweep.points))
        self.sweeps.add(kept)
        return kept, notes

    def add_frame(self, index: int, frame: CameraFrame) -> None:
        self.cameras.add_frame(index, frame)

    def set_calibration(self, index: int, calibration: Calibration | None) -> None:
        self.cameras.set_calibration(index, calibration)

    def run(self, trigger: Trigger, settings: DetectorSettings) -> Result:
        """The model on one trigger; `settings` as resolve() returns them."""
        prepared = self.prepare(trigger, settings)
        return prepared if isinstance(prepared, Result) else self.finish(prepared)

    def prepare(self, trigger: Trigger, settings: DetectorSettings) -> PreparedTrigger | Result:
        """run()'s first half, up to the network's inputs (a node's second thread runs the
        network on the frame before meanwhile); a Result when the frame is skipped."""
        started, timer = time.perf_counter(), StageTimer()
        stamp_ns = trigger.stamp_ns
        reference = self._reference(trigger, settings)
        notes = []
        if self._needs_transform() and not self.tf.can_transform(settings.fixed_frame, reference, stamp_ns):
            notes.append(f"no transform {settings.fixed_frame} <- {reference} at the trigger's stamp "
                         f"within tf_timeout {settings.tf_timeout} s: past sweeps and cameras off the trigger "
                         f"time cannot be placed")
        points = np.zeros((0, 5), np.float32)
        if trigger.sweep is not None:
            points, sweep_notes = self.sweeps.points(trigger.sweep, self.tf, settings.fixed_frame)
            notes += sweep_notes
        cameras = []
        if reads(self.modality, "camera"):
            cameras, camera_notes = self.cameras.views(reference, stamp_ns, int(settings.max_camera_delay * 1e9),
                                                       self.tf, settings.fixed_frame)
            notes += camera_notes
            if not reads(self.modality, "lidar") and all(view.image is None for view in cameras):
                return Result(stamp_ns, reference, ["camera frame skipped: " + "; ".join(notes)], skipped=True)
        sample = Sample(token=f"{trigger.frame_id}@{stamp_ns}", timestamp_us=stamp_ns // 1000, points=points,
                        cameras=cameras, lidar_to_global=np.eye(4))
        timer.seconds["convert"] = [trigger.convert_s + time.perf_counter() - started]
        return PreparedTrigger(trigger, settings, reference, notes, timer, self.predictor.prepare(sample, timer))

    def finish(self, prepared: PreparedTrigger) -> Result:
        """run()'s second half: the network, decoding and thresholds."""
        settings, timer = prepared.settings, prepared.timer
        prediction = self.predictor.finish(prepared.model_input, timer, score_threshold=settings.lowest_threshold())
        boxes = settings.filter(prediction.boxes) if prediction.boxes is not None else None
        maps = {name: prediction.map_probability[MAP_CLASSES.index(name)] for name in settings.map_classes}
        return Result(prepared.trigger.stamp_ns, prepared.reference, prepared.notes, boxes=boxes, maps=maps,
                      grid=self.config.map_grid.bev,
                      stage_ms={stage: 1e3 * timer.seconds[stage][0] for stage in MODEL_STAGES},
                      infer_parts_ms={part: 1e3 * sum(seconds) for part, seconds in timer.seconds.items()
                                      if part not in MODEL_STAGES})
