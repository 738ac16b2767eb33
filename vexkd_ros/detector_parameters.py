"""The detector nodes' parameters: declared with descriptors, validated at start and on
every `ros2 param set`.

Everything about the model (grids, classes, sweeps trained with, thresholds it decodes
with) comes from the checkpoint; parameters only choose how the node serves it. Those
that shape what is built at start (checkpoint, device, sweeps, image_transport) are
read-only; the rest apply from the next frame on.
"""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.inference import BACKENDS
from vexkd_core.runtime.settings import DetectorSettings

IMAGE_TRANSPORTS = ("raw", "compressed")
DEVICES = ("cpu", "cuda")
MAX_TF_TIMEOUT_S = 2.0  # the longest an answer may be held back waiting for /tf


class ParameterError(ValueError):
    """A parameter value the node cannot start with."""


def _descriptor(text: str, **limits) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **limits)


def _unit_range() -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]


# name -> (default, descriptor, which modalities declare it)
PARAMETERS = {
    "checkpoint": ("", _descriptor("path of the model.pt to serve, or of the .onnx with backend onnxruntime "
                                   "(required; its modality must match the node)", read_only=True),
                   ("lidar", "camera", "fusion")),
    "backend": ("torch", _descriptor("inference engine: torch (a .pt) or onnxruntime (an exported .onnx; TensorRT "
                                     "and CUDA providers on device cuda where installed)", read_only=True),
                ("lidar", "camera", "fusion")),
    "device": ("cpu", _descriptor("torch device: cpu or cuda", read_only=True), ("lidar", "camera", "fusion")),
    "score_threshold": (-1.0, _descriptor("minimum detection score, all classes; -1: the checkpoint's own",
                                          floating_point_range=[FloatingPointRange(from_value=-1.0, to_value=1.0)]),
                        ("lidar", "camera", "fusion")),
    **{f"class_score_threshold.{name}": (0.0, _descriptor(
        f"minimum score of {name}; the higher of this and score_threshold applies",
        floating_point_range=_unit_range()), ("lidar", "camera", "fusion")) for name in DETECTION_CLASSES},
    "max_camera_delay": (0.12, _descriptor("seconds an image may be away from the trigger to be used",
                                           floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0)]),
                         ("camera", "fusion")),
    "sweeps": (-1, _descriptor("past LiDAR sweeps to accumulate; -1: as many as the model was trained with",
                               integer_range=[IntegerRange(from_value=-1, to_value=20, step=1)], read_only=True),
               ("lidar", "fusion")),
    "map_classes": (list(MAP_CLASSES), _descriptor(f"map classes to publish, of {', '.join(MAP_CLASSES)}; "
                                                   "[''] for none"),
                    ("lidar", "camera", "fusion")),
    "publish_markers": (True, _descriptor("publish ~/output/markers for RViz"), ("lidar", "camera", "fusion")),
    "marker_score_threshold": (0.3, _descriptor("minimum score of the boxes drawn in ~/output/markers",
                                                floating_point_range=_unit_range()), ("lidar", "camera", "fusion")),
    "image_transport": ("compressed", _descriptor("image topics carry sensor_msgs/Image (raw) or CompressedImage",
                                                  read_only=True), ("camera", "fusion")),
    "fixed_frame": ("map", _descriptor("world-fixed TF frame through which past sweeps and images are moved"),
                    ("lidar", "camera", "fusion")),
    "tf_timeout": (0.2, _descriptor("seconds an input waits for /tf to know its frame at its stamp (a localiser "
                                    "lagging the sensor); then it runs without past sweeps and cameras off its "
                                    "time, and says so", floating_point_range=[
                                        FloatingPointRange(from_value=0.0, to_value=MAX_TF_TIMEOUT_S)]),
                   ("lidar", "camera", "fusion")),
    "bev_frame": ("LIDAR_TOP", _descriptor("frame of the outputs: the LiDAR frame the model was trained in"),
                  ("camera",)),
}


def declared_names(modality: str) -> list[str]:
    return [name for name, (_, _, modalities) in PARAMETERS.items() if modality in modalities]


def declare_and_read(node: Node, modality: str) -> DetectorSettings:
    """Declare every parameter of `modality`; a value given at start that rclpy refuses
    (wrong type, out of range) or that validate() refuses raises ParameterError."""
    values = {}
    for name in declared_names(modality):
        default, descriptor, _ = PARAMETERS[name]
        try:
            node.declare_parameter(name, default, descriptor)
        except InvalidParameterTypeException as error:  # args[0]: rclpy's message without the name appended
            raise ParameterError(f"parameter '{name}' must be a {type(default).__name__} like {default!r}: "
                                 f"{error.args[0]}") from None
        except InvalidParameterValueException as error:
            reason = error.args[0].split("Reason: ", 1)[-1]
            raise ParameterError(f"parameter '{name}' is out of range: {reason}") from None
        values[name] = node.get_parameter(name).value
    return validate(values, modality)


def current_values(node: Node, modality: str) -> dict:
    return {name: node.get_parameter(name).value for name in declared_names(modality)}


def validate(values: dict, modality: str) -> DetectorSettings:
    if not values["checkpoint"]:
        raise ParameterError("parameter 'checkpoint' is required (path of a model.pt)")
    if values["backend"] not in BACKENDS:
        raise ParameterError(f"parameter 'backend' must be one of {', '.join(BACKENDS)}, not '{values['backend']}'")
    if values["device"] not in DEVICES:
        raise ParameterError(f"parameter 'device' must be one of {', '.join(DEVICES)}, not '{values['device']}'")
    if values["device"] == "cuda" and values["backend"] == "torch":
        import torch

        if not torch.cuda.is_available():
            raise ParameterError("parameter 'device' is cuda but PyTorch sees no CUDA device")
    if values["device"] == "cuda" and values["backend"] == "onnxruntime":
        from vexkd_core.onnx_runtime import GPU_PROVIDERS, execution_providers

        if execution_providers("cuda") == ["CPUExecutionProvider"]:
            raise ParameterError(f"parameter 'device' is cuda but this onnxruntime has neither of "
                                 f"{', '.join(GPU_PROVIDERS)} (install onnxruntime-gpu)")
    map_classes = tuple(name for name in values["map_classes"] if name)
    unknown = [name for name in map_classes if name not in MAP_CLASSES]
    if unknown:
        raise ParameterError(f"parameter 'map_classes' has unknown classes {unknown}; known: {', '.join(MAP_CLASSES)}")
    for name in ("fixed_frame", "bev_frame"):
        if name in values and not values[name]:
            raise ParameterError(f"parameter '{name}' must name a TF frame, not be empty")
    transport = values.get("image_transport", "compressed")
    if transport not in IMAGE_TRANSPORTS:
        raise ParameterError(f"parameter 'image_transport' must be raw or compressed, not '{transport}'")
    return DetectorSettings(
        checkpoint=values["checkpoint"], backend=values["backend"], device=values["device"],
        score_threshold=values["score_threshold"],
        class_score_thresholds={name: values[f"class_score_threshold.{name}"] for name in DETECTION_CLASSES
                                if values[f"class_score_threshold.{name}"] > 0.0},
        max_camera_delay=values.get("max_camera_delay", 0.0), sweeps=values.get("sweeps", -1),
        map_classes=map_classes, publish_markers=values["publish_markers"],
        marker_score_threshold=values["marker_score_threshold"], image_transport=transport,
        fixed_frame=values["fixed_frame"], bev_frame=values.get("bev_frame", ""), tf_timeout=values["tf_timeout"])
