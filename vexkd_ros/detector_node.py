"""The detector nodes: `lidar_detector`, `camera_detector` (students) and `fusion_detector`
(the teacher), one class with the contract of Autoware's perception nodes.

Callbacks only file messages away (clouds are converted, images kept encoded); one worker
thread runs the model on the newest trigger and drops older ones, so a slow model never
builds a backlog. Every output carries the trigger's header. Bad messages are logged with
a throttled warning and skipped. `ros2 param set` applies from the next frame on.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import rclpy
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64, Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from vexkd_core.checkpoint import CheckpointError, model_from_checkpoint
from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.inference import Predictor
from vexkd_core.models.vexkd import StageTimer

from .conversions import (MessageError, boxes_to_detections, boxes_to_markers, boxes_to_velocities, cloud_to_points,
                          probability_to_grid, stamp_to_ns)
from .detector_parameters import DetectorSettings, ParameterError, current_values, declare_and_read, validate
from .environment import apply_default_ros_environment
from .node_inputs import CameraCache, Sweep, SweepHistory, build_sample
from .tf_buffer import TransformBuffer

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
OUTPUT_QOS = QoSProfile(depth=1)
TF_QOS = QoSProfile(depth=100)
TF_STATIC_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
STAGES = ("convert", "preprocess", "infer", "postprocess", "publish")
WARN_PERIOD_S = 5.0
TF_WAIT_S = 0.1  # how long a trigger waits for /tf at its own stamp
CLOCK_JUMP_BACK = Duration(seconds=-1.0)  # a ROS time jump back this large (reset /clock) clears /tf history
VELOCITIES_TOPIC = "~/output/objects/velocities"
NODE_NAMES = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


class DetectorNode(Node):
    def __init__(self, modality: str, **node_options):
        super().__init__(NODE_NAMES[modality], **node_options)
        try:
            self._set_up(modality)
        except BaseException:
            # A half-built node left to the garbage collector is finalised after
            # rclpy.shutdown() and can crash the process instead of exiting with 2.
            self.destroy_node()
            raise

    def _set_up(self, modality: str) -> None:
        self.modality = modality
        settings = declare_and_read(self, modality)
        model, self.config, _ = model_from_checkpoint(settings.checkpoint, expected_modality=modality)
        self.settings: DetectorSettings = self._resolved(settings)
        self.predictor = Predictor(model, self.config, self.settings.device)
        self.sweeps = SweepHistory(self.config.model.lidar.sweeps if self.settings.sweeps < 0 else self.settings.sweeps)
        self.cameras = CameraCache()
        self.tf = TransformBuffer()
        self._pending = None  # the newest trigger not yet processed
        self._wake = threading.Condition()
        self._stopping = False
        self._last_warning: dict[str, float] = {}
        self._release = self.create_guard_condition(self._release_worker)
        self._outputs_lock = threading.Lock()  # the worker publishes while a parameter change swaps publishers
        self._create_outputs()
        self._create_inputs()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=CLOCK_JUMP_BACK, on_clock_change=False),
            post_callback=self._on_clock_jump)
        self._worker = threading.Thread(target=self._work, name=f"{self.get_name()}-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"{modality} model ({self.config.train.tasks}) from {self.settings.checkpoint} on "
                               f"{self.settings.device}; {self.sweeps.sweeps} past sweeps; "
                               f"{'publishing objects' if self.detects else 'no detection head: no objects'}; "
                               f"publishing map classes {', '.join(self.settings.map_classes) or 'none'}")

    # ------------------------------------------------------------------ wiring
    @property
    def detects(self) -> bool:
        return "detection" in self.config.train.task_names

    def _resolved(self, settings: DetectorSettings) -> DetectorSettings:
        """Settings with score_threshold -1 replaced by the checkpoint's own, and without the
        outputs of a task the model was not trained for (train.tasks)."""
        if settings.score_threshold < 0:
            settings = replace(settings, score_threshold=self.config.model.score_threshold)
        if "segmentation" not in self.config.train.task_names:
            settings = replace(settings, map_classes=())
        if not self.detects:
            settings = replace(settings, publish_markers=False)
        return settings

    def _create_outputs(self) -> None:
        self.objects_pub = self.create_publisher(Detection3DArray, "~/output/objects", OUTPUT_QOS) \
            if self.detects else None
        self.velocities_pub = self.create_publisher(PointCloud2, VELOCITIES_TOPIC, OUTPUT_QOS) \
            if self.detects else None
        self.markers_pub, self.map_pubs = None, {}
        self._update_optional_outputs(self.settings)
        self.time_pubs = {stage: self.create_publisher(Float64, f"~/debug/processing_time_ms/{stage}", OUTPUT_QOS)
                          for stage in STAGES}
        self.total_time_pub = self.create_publisher(Float64, "~/debug/processing_time_ms", OUTPUT_QOS)

    def _update_optional_outputs(self, settings: DetectorSettings) -> None:
        """Markers and map grids as `settings` asks: publishers created or destroyed to match."""
        if settings.publish_markers and self.markers_pub is None:
            self.markers_pub = self.create_publisher(MarkerArray, "~/output/markers", OUTPUT_QOS)
        elif not settings.publish_markers and self.markers_pub is not None:
            self.destroy_publisher(self.markers_pub)
            self.markers_pub = None
        map_pubs = {}
        for name in settings.map_classes:
            map_pubs[name] = self.map_pubs.pop(name, None) or \
                self.create_publisher(OccupancyGrid, f"~/output/map/{name}", OUTPUT_QOS)
        for publisher in self.map_pubs.values():
            self.destroy_publisher(publisher)
        self.map_pubs = map_pubs

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Validate the node's parameters as they would be after the change and apply them
        (rclpy has already refused read-only ones, wrong types and values out of range)."""
        values = current_values(self, self.modality)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            settings = self._resolved(validate(values, self.modality))
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        with self._outputs_lock:
            self._update_optional_outputs(settings)
            self.settings = settings
        self.get_logger().info("parameters set: " + ", ".join(f"{p.name}={p.value!r}" for p in parameters))
        return SetParametersResult(successful=True)

    def _create_inputs(self) -> None:
        self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, static=False), TF_QOS)
        self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, static=True), TF_STATIC_QOS)
        if self.modality != "camera":
            self.create_subscription(PointCloud2, "~/input/pointcloud", self._on_cloud, SENSOR_QOS)
        if self.modality != "lidar":
            image_type = CompressedImage if self.settings.image_transport == "compressed" else Image
            for index in range(len(CAMERA_CHANNELS)):
                self.create_subscription(image_type, f"~/input/image{index}",
                                         lambda m, i=index: self._on_image(i, m), SENSOR_QOS)
                self.create_subscription(CameraInfo, f"~/input/camera_info{index}",
                                         lambda m, i=index: self._on_camera_info(i, m), SENSOR_QOS)

    # ------------------------------------------------------------------ callbacks
    def _warn(self, kind: str, message: str) -> None:
        """At most one warning of each kind per WARN_PERIOD_S (rclpy throttles per call site,
        which would let one kind of bad input hide every other)."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._last_warning[kind] = now
            self.get_logger().warning(message)

    def _warn_text(self, message: str) -> None:
        """_warn with messages alike up to their numbers as one kind."""
        self._warn(re.sub(r"[0-9.]+", "#", message), message)

    def _has_frame(self, msg, what: str) -> bool:
        """False (and a warning) for a message without a frame: its outputs would carry
        frame_id '', which RViz and tf2 drop, and TF cannot place it."""
        if msg.header.frame_id:
            return True
        self._warn(f"no frame {what}", f"{what} skipped: its header.frame_id is empty")
        return False

    def _on_tf(self, msg: TFMessage, static: bool) -> None:
        topic = "/tf_static" if static else "/tf"
        for note in self.tf.add(msg, static=static):
            if note.kind == "time jump":
                self.get_logger().warning(note.text)  # rare (a looped bag): every one is said
            else:
                self._warn(f"{topic} {note.kind}", f"{topic}: {note.text}")

    def _on_clock_jump(self, jump) -> None:
        self.tf.clear_dynamic()
        self.get_logger().warning(f"ROS time jumped back {-jump.delta.nanoseconds * 1e-9:.1f} s: "
                                  "/tf history cleared")

    def _on_cloud(self, msg: PointCloud2) -> None:
        started = time.perf_counter()
        if not self._has_frame(msg, "point cloud"):
            return
        try:
            points = cloud_to_points(msg, optional=())
        except MessageError as error:
            self._warn("cloud", f"point cloud skipped: {error}")
            return
        # Only counted: preprocess() drops non-finite points, for the dataset path and this one alike.
        finite = int(np.isfinite(points).all(axis=1).sum())
        if finite < len(points):
            self._warn("nan", f"{len(points) - finite} of {len(points)} points are NaN/inf; they are dropped")
        if finite == 0:
            self._warn("empty", "point cloud skipped: it has no (finite) points")
            return
        sweep = Sweep(stamp_to_ns(msg.header.stamp), msg.header.frame_id, points)
        self.sweeps.add(sweep)
        self._trigger(msg.header, sweep, time.perf_counter() - started)

    def _on_image(self, index: int, msg) -> None:
        if not self._has_frame(msg, f"image{index}"):
            return
        self.cameras.add_image(index, msg)
        if self.modality == "camera" and index == 0:
            self._trigger(msg.header, None, 0.0)

    def _on_camera_info(self, index: int, msg: CameraInfo) -> None:
        try:
            self.cameras.add_info(index, msg)
        except MessageError as error:
            self._warn_text(f"camera_info{index} refused, camera {index} left out until a valid one arrives: {error}")

    def _trigger(self, header: Header, sweep: Sweep | None, convert_s: float) -> None:
        with self._wake:
            self._pending = (header, sweep, convert_s)  # replaces an older trigger the worker has not taken
        # The worker starts only after the executor has handled every message that was ready
        # together with the trigger (a guard condition fires in the next wait), so an image that
        # arrived with it is not missed just because its subscription comes later in the list.
        self._release.trigger()

    def _release_worker(self) -> None:
        with self._wake:
            self._wake.notify()

    # ------------------------------------------------------------------ the model
    def _has_subscribers(self) -> bool:
        with self._outputs_lock:
            publishers = [self.objects_pub, self.velocities_pub, self.markers_pub, *self.map_pubs.values()]
        return any(p is not None and p.get_subscription_count() > 0 for p in publishers)

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                (header, sweep, convert_s), self._pending = self._pending, None
            if not self._has_subscribers():
                continue
            try:
                self._process(header, sweep, convert_s)
            except Exception as error:  # noqa: BLE001 - one bad frame must not stop the node
                if self._stopping or not self.context.ok():
                    return  # shutting down mid-frame: the publishers are gone
                self.get_logger().error(f"frame {header.stamp.sec}.{header.stamp.nanosec:09d} failed: "
                                        f"{type(error).__name__}: {error}", throttle_duration_sec=WARN_PERIOD_S)

    def _process(self, header: Header, sweep: Sweep | None, convert_s: float) -> dict[str, float] | None:
        """Run the model on one trigger and publish; returns milliseconds per stage (None: skipped)."""
        settings, timer = self.settings, StageTimer()
        started = time.perf_counter()
        stamp_ns = stamp_to_ns(header.stamp)
        points, notes = np.zeros((0, 5), np.float32), []
        reference = header.frame_id if sweep is not None else settings.bev_frame
        if (self.sweeps.sweeps > 0 or self.modality != "lidar") and \
                not self.tf.wait_for(settings.fixed_frame, reference, stamp_ns, TF_WAIT_S):
            notes.append(f"no transform {settings.fixed_frame} <- {reference} at the trigger's stamp "
                         f"within {TF_WAIT_S} s: past sweeps and cameras off the trigger time cannot be placed")
        if sweep is not None:
            points, sweep_notes = self.sweeps.points(sweep, self.tf, settings.fixed_frame)
            notes += sweep_notes
        cameras = []
        if self.modality != "lidar":
            cameras, camera_notes = self.cameras.views(reference, stamp_ns, int(settings.max_camera_delay * 1e9), self.tf,
                                                       settings.fixed_frame)
            notes += camera_notes
            if all(view.image is None for view in cameras) and self.modality == "camera":
                self._warn("no cameras", "camera frame skipped: " + "; ".join(notes))
                return None
        for note in notes:
            self._warn_text(note)
        output_header = header if sweep is not None else Header(stamp=header.stamp, frame_id=settings.bev_frame)
        sample = build_sample(f"{header.frame_id}@{stamp_ns}", stamp_ns, points, cameras)
        timer.seconds["convert"] = [convert_s + time.perf_counter() - started]
        prediction = self.predictor(sample, timer, score_threshold=settings.lowest_threshold())
        publish_started = time.perf_counter()
        with self._outputs_lock:
            self._publish(prediction, output_header, settings)
        timer.seconds["publish"] = [time.perf_counter() - publish_started]
        milliseconds = {stage: 1e3 * timer.seconds[stage][0] for stage in STAGES}
        for stage, publisher in self.time_pubs.items():
            publisher.publish(Float64(data=milliseconds[stage]))
        self.total_time_pub.publish(Float64(data=sum(milliseconds.values())))
        return milliseconds

    def _publish(self, prediction, header: Header, settings: DetectorSettings) -> None:
        """Objects, their velocities, markers and the grids there are publishers for."""
        if prediction.boxes is not None:
            boxes = settings.filter(prediction.boxes)
            self.objects_pub.publish(boxes_to_detections(boxes, DETECTION_CLASSES, header))
            self.velocities_pub.publish(boxes_to_velocities(boxes, header))
            if self.markers_pub is not None:
                shown = boxes.select(boxes.score >= settings.marker_score_threshold)
                self.markers_pub.publish(boxes_to_markers(shown, DETECTION_CLASSES, header))
        grid = self.config.map_grid.bev
        for name, publisher in self.map_pubs.items():
            publisher.publish(probability_to_grid(prediction.map_probability[MAP_CLASSES.index(name)], grid, header))

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._worker.join(timeout=10.0)


def run(modality: str, argv: list[str] | None = None) -> int:
    """Console-script entry: one node, spun until Ctrl-C or shutdown; exit 2 on a bad setup."""
    apply_default_ros_environment()
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv)
    node = None
    try:
        node = DetectorNode(modality)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (ParameterError, CheckpointError) as error:
        print(f"{NODE_NAMES[modality]}: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def lidar_main() -> int:
    return run("lidar")


def camera_main() -> int:
    return run("camera")


def fusion_main() -> int:
    return run("fusion")



if __name__ == "__main__":  # `python -m vexkd_ros.detector_node lidar|camera|fusion --ros-args ...`
    if len(sys.argv) < 2 or sys.argv[1] not in NODE_NAMES:
        print(f"usage: python -m vexkd_ros.detector_node {{{','.join(NODE_NAMES)}}} --ros-args ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv))
