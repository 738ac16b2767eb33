"""What launch/perception.launch.py decides from its arguments, in plain Python so that it
is tested where launch is not installed (it is not on PyPI).

A parameter argument overrides config/detector.yaml only when it is given. launch_ros
hands the node `parameters=[yaml, overrides]` and the later one wins, so a default in the
launch file would replace a user's edit of the YAML in silence; the arguments' default is
UNSET instead, and the node keeps the YAML's value (or, where the YAML has none, its own
default).
"""
from __future__ import annotations

from collections.abc import Mapping

import yaml

from vexkd_core.modalities import reads

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
EXECUTABLES = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}
# Launch arguments passed on as parameters of the same name: to every node, and to the nodes with cameras.
PARAMETER_ARGUMENTS = ("checkpoint", "backend", "device", "fixed_frame", "score_threshold", "marker_score_threshold",
                       "tf_timeout")
CAMERA_PARAMETER_ARGUMENTS = ("image_transport",)
# The default of the parameter and topic arguments: "not given".
UNSET = ""
# The nodes' own default when the YAML has none. detector_parameters.PARAMETERS holds it,
# but importing that module takes seconds (torch); tests/test_launch.py checks they agree.
NODE_IMAGE_TRANSPORT = "compressed"


def parameter_arguments(modality: str) -> tuple[str, ...]:
    """The parameter arguments the node of `modality` declares: the LiDAR node has no image_transport."""
    return PARAMETER_ARGUMENTS + (CAMERA_PARAMETER_ARGUMENTS if reads(modality, "camera") else ())


def given_parameter_arguments(arguments: Mapping[str, str], modality: str) -> tuple[str, ...]:
    """The parameter arguments to pass on: only those given, so an unset one leaves the YAML's value."""
    return tuple(name for name in parameter_arguments(modality) if arguments[name] != UNSET)


def yaml_parameters(config_text: str, node_name: str) -> dict:
    """The parameters config/detector.yaml sets for `node_name` (its `/**: <node>:` block)."""
    blocks = yaml.safe_load(config_text) or {}
    return dict(blocks.get("/**", {}).get(node_name, {}).get("ros__parameters", {}))


def image_transport(arguments: Mapping[str, str], from_yaml: Mapping) -> str:
    """The transport the node will use, which decides its default image topics: the
    argument's if given, else the YAML's, else the node's default."""
    if arguments["image_transport"] != UNSET:
        return arguments["image_transport"]
    return from_yaml.get("image_transport", NODE_IMAGE_TRANSPORT)


def image_topics(arguments: Mapping[str, str], transport: str) -> list[str]:
    """Each camera's image topic: its image<i>_topic argument if given, else the bag's
    name, /<camera>/image with /compressed appended for the compressed transport."""
    suffix = "/compressed" if transport == "compressed" else ""
    given = [arguments[f"image{i}_topic"] for i in range(len(CAMERAS))]
    return [topic if topic != UNSET else f"/{camera}/image{suffix}" for camera, topic in zip(CAMERAS, given)]
