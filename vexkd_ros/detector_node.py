"""The detector nodes: `lidar_detector`, `camera_detector` (students) and `fusion_detector`
(the teacher), one class with the contract of Autoware's perception nodes.

The node is the ROS adapter of vexkd_core.runtime.pipeline.Pipeline: callbacks convert
messages into the pipeline's inputs (clouds at once, images kept encoded), a worker of two
threads (vexkd_core.runtime.worker.TwoStageWorker) prepares the newest trigger while it runs
the network on the one before, each dropping older ones, so a slow model never builds a
backlog, and node_outputs publishes the result under the trigger's stamp. Bad messages are logged with a throttled warning and skipped.
`ros2 param set` applies from the next frame on.
"""
from __future__ import annotations

import contextlib
import sys
import time

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
import torch

from vexkd_core.allocator import use_chosen_allocator
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.data.sensor_files import reduce_image
from vexkd_core.errors import CheckpointError
from vexkd_core.inference import load_predictor
from vexkd_core.modalities import reads
from vexkd_core.runtime.node_inputs import Calibration, CameraFrame, Sweep
from vexkd_core.runtime.pipeline import Pipeline, PreparedTrigger, Result, Trigger
from vexkd_core.runtime.settings import DetectorSettings
from vexkd_core.runtime.trigger_gate import TriggerGate
from vexkd_core.runtime.worker import TwoStageWorker

from .cdr import LayoutError
from .conversions import (MessageError, camera_info_to_distortion, camera_info_to_intrinsics, cloud_to_points,
                          compressed_to_rgb, encoded_image_size, image_to_rgb, stamp_to_ns)
from .detector_parameters import ParameterError, current_values, declare_and_read, validate
from .environment import apply_default_ros_environment, single_threaded_blas
from .node_diagnostics import WARN_PERIOD_S, NodeHealth
from .node_outputs import NodeOutputs
from .tf_buffer import TransformBuffer

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
TF_QOS = QoSProfile(depth=100)
TF_STATIC_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
GATE_POLL_S = 0.01  # how often held triggers are checked for an expired wait (wall time: sim time may pause)
CLOCK_JUMP_BACK = Duration(seconds=-1.0)  # a ROS time jump back this large (reset /clock) clears /tf history
NODE_NAMES = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


def camera_frame(msg: Image | CompressedImage) -> CameraFrame:
    """The pipeline's lazy frame: the size a JPEG/PNG header claims is read now, pixels on use."""
    if isinstance(msg, CompressedImage):
        return CameraFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, encoded_image_size(msg.data),
                           lambda reduction: compressed_to_rgb(msg, reduction))
    return CameraFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, (msg.width, msg.height),
                       lambda reduction: reduce_image(image_to_rgb(msg), reduction))


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
        predictor = load_predictor(settings.checkpoint, settings.backend, settings.device, expected_modality=modality)
        if settings.backend == "onnxruntime":
            # torch only prepares the graph's inputs and decodes its outputs here: small ops
            # that, on a pool of one thread per core beside onnxruntime's, waited at barriers
            # for a core another process held (2 cores, another process busy: 1,000 ms a
            # LiDAR frame instead of 86).
            torch.set_num_threads(1)
        config = predictor.config
        self.tf = TransformBuffer()
        self.pipeline = Pipeline(predictor, modality, settings.sweeps, self.tf)
        self.settings: DetectorSettings = self.pipeline.resolve(settings)
        self.outputs = NodeOutputs(self, self.pipeline.detects, self.settings)
        self.worker = TwoStageWorker(self._prepare, self._finish, f"{self.get_name()}-worker")
        self.gate = TriggerGate()
        self.create_timer(GATE_POLL_S, self._release_held, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # The worker starts only after the executor has handled every message that was ready
        # together with the trigger (a guard condition fires in the next wait), so an image that
        # arrived with it is not missed just because its subscription comes later in the list.
        self._release = self.create_guard_condition(self.worker.release)
        self.health = NodeHealth(self, self.worker, predictor.trained_on)
        self._create_inputs()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=CLOCK_JUMP_BACK, on_clock_change=False),
            post_callback=self._on_clock_jump)
        self.get_logger().info(f"{modality} model ({config.train.tasks}) from {settings.checkpoint} with "
                               f"{predictor.describe()}, {predictor.trained_on}; "
                               f"{self.pipeline.sweeps.sweeps} past sweeps; "
                               f"{'publishing objects' if self.pipeline.detects else 'no detection head: no objects'}"
                               f"; publishing map classes {', '.join(self.settings.map_classes) or 'none'}")

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Validate the node's parameters as they would be after the change and apply them
        (rclpy has already refused read-only ones, wrong types and values out of range)."""
        values = current_values(self, self.modality)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            settings = self.pipeline.resolve(validate(values, self.modality))
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        self.outputs.update(settings)
        self.settings = settings
        self.get_logger().info("parameters set: " + ", ".join(f"{p.name}={p.value!r}" for p in parameters))
        return SetParametersResult(successful=True)

    def _create_inputs(self) -> None:
        self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, static=False), TF_QOS)
        self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, static=True), TF_STATIC_QOS)
        if reads(self.modality, "lidar"):
            self.create_subscription(PointCloud2, "~/input/pointcloud", self._on_cloud, SENSOR_QOS)
        if reads(self.modality, "camera"):
            image_type = CompressedImage if self.settings.image_transport == "compressed" else Image
            for index in range(len(CAMERA_CHANNELS)):
                self.create_subscription(image_type, f"~/input/image{index}",
                                         lambda m, i=index: self._on_image(i, m), SENSOR_QOS)
                self.create_subscription(CameraInfo, f"~/input/camera_info{index}",
                                         lambda m, i=index: self._on_camera_info(i, m), SENSOR_QOS)

    # ------------------------------------------------------------------ callbacks
    def _has_frame(self, msg, what: str) -> bool:
        """False (and a warning) for a message without a frame: its outputs would carry
        frame_id '', which RViz and tf2 drop, and TF cannot place it."""
        if msg.header.frame_id:
            return True
        self.health.warn(f"no frame {what}", f"{what} skipped: its header.frame_id is empty")
        return False

    def _on_tf(self, msg: TFMessage, static: bool) -> None:
        topic = "/tf_static" if static else "/tf"
        for note in self.tf.add(msg, static=static):
            if note.kind == "time jump":
                self.get_logger().warning(note.text)  # rare (a looped bag): every one is said
            else:
                self.health.warn(f"{topic} {note.kind}", f"{topic}: {note.text}")
        self._release_held()

    def _on_clock_jump(self, jump) -> None:
        self.tf.clear_dynamic()
        self.gate.clear()  # held triggers are from before the jump: their transforms will not come
        self.get_logger().warning(f"ROS time jumped back {-jump.delta.nanoseconds * 1e-9:.1f} s: "
                                  "/tf history cleared")

    def _on_cloud(self, msg: PointCloud2) -> None:
        started = time.perf_counter()
        if not self._has_frame(msg, "point cloud"):
            return
        try:
            points = cloud_to_points(msg, optional=())
        except MessageError as error:
            self.health.warn("cloud", f"point cloud skipped: {error}")
            return
        kept, notes = self.pipeline.add_sweep(Sweep(stamp_to_ns(msg.header.stamp), msg.header.frame_id, points))
        for note in notes:
            self.health.warn_text(note)
        if kept is not None:
            self._trigger(Trigger(kept.stamp_ns, kept.frame_id, kept, time.perf_counter() - started))

    def _on_image(self, index: int, msg) -> None:
        if not self._has_frame(msg, f"image{index}"):
            return
        self.pipeline.add_frame(index, camera_frame(msg))
        if not reads(self.modality, "lidar") and index == 0:  # a camera-only node triggers on image 0
            self._trigger(Trigger(stamp_to_ns(msg.header.stamp), msg.header.frame_id, None))
        else:
            self._release_held()  # it may complete a held frame

    def _on_camera_info(self, index: int, msg: CameraInfo) -> None:
        try:
            calibration = Calibration(camera_info_to_intrinsics(msg), msg.width, msg.height,
                                      camera_info_to_distortion(msg))
        except MessageError as error:
            calibration = None
            self.health.warn_text(f"camera_info{index} refused, camera {index} left out until a valid one "
                                  f"arrives: {error}")
        self.pipeline.set_calibration(index, calibration)

    def _trigger(self, trigger: Trigger) -> None:
        settings = self.settings
        self._offer(self.gate.offer(trigger, lambda waited_s: self.pipeline.ready(trigger, settings, waited_s),
                                    time.monotonic()))

    def _release_held(self) -> None:
        if len(self.gate):
            self._offer(self.gate.release(time.monotonic()))

    def _offer(self, triggers: list[Trigger]) -> None:
        """To the worker, oldest first: it keeps the newest and counts the others as dropped."""
        for trigger in triggers:
            self.worker.offer(trigger)
        if triggers:
            self._release.trigger()

    # ------------------------------------------------------------------ the model
    def _prepare(self, trigger: Trigger) -> PreparedTrigger | None:
        """The worker's first thread: the frame up to the network's inputs."""
        if not self.outputs.has_subscribers():
            return None
        with self._frame_errors(trigger):
            prepared = self.pipeline.prepare(trigger, self.settings)
            if not isinstance(prepared, Result):
                return prepared
            for note in prepared.notes:  # skipped: nothing to finish
                self.health.warn_text(note)
        return None

    def _finish(self, prepared: PreparedTrigger) -> None:
        """The worker's second thread: the network, decoding and the outputs."""
        with self._frame_errors(prepared.trigger):
            result = self.pipeline.finish(prepared)
            for note in result.notes:
                self.health.warn_text(note)
            milliseconds, latency = self.outputs.publish(result, prepared.settings, prepared.trigger.arrived_s)
            self.health.published(latency, sum(milliseconds.values()))

    @contextlib.contextmanager
    def _frame_errors(self, trigger: Trigger):
        """One bad frame must not stop the node: its error is logged and reported."""
        try:
            yield
        except Exception as error:  # noqa: BLE001
            if self.worker.stopping or not self.context.ok():
                return  # shutting down mid-frame: the publishers are gone
            text = f"frame {trigger.stamp_ns * 1e-9:.9f} failed: {type(error).__name__}: {error}"
            self.health.failed(text)
            self.get_logger().error(text, throttle_duration_sec=WARN_PERIOD_S)

    def stop(self) -> None:
        self.worker.stop()


def run(modality: str, argv: list[str] | None = None) -> int:
    """Console-script entry: one node, spun until Ctrl-C or shutdown; exit 2 on a bad setup."""
    apply_default_ros_environment()
    single_threaded_blas()
    use_chosen_allocator()
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv)
    node = None
    try:
        node = DetectorNode(modality)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (ParameterError, CheckpointError, LayoutError) as error:
        print(f"{NODE_NAMES[modality]}: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Shut down (Ctrl-C, SIGTERM) while the executor was building its wait set: rclpy
        # raises RCLError "context is not valid" there instead of ExternalShutdownException.
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
