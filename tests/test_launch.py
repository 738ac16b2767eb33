"""The launch file, parameter YAML and RViz config agree with the code (launch/launch_ros
are not on PyPI, so the launch file is read as Python source and its decisions tested
through vexkd_ros.launch_arguments; it is run under real launch only where launch is
installed. RViz is not on PyPI either, so tests/support/ros_rviz.py says what its displays do
with the config)."""
import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ros_rviz
from vexkd_core.classes import MAP_CLASSES
from vexkd_ros.detector_node import NODE_NAMES
from vexkd_ros.detector_parameters import PARAMETERS, declared_names
from vexkd_ros.launch_arguments import (CAMERA_PARAMETER_ARGUMENTS, CAMERAS, EXECUTABLES, NODE_IMAGE_TRANSPORT,
                                        PARAMETER_ARGUMENTS, UNSET, given_parameter_arguments, image_topics,
                                        image_transport, yaml_parameters)
from vexkd_ros.node_outputs import OUTPUT_QOS
from vexkd_ros.player import topic_qos
from vexkd_ros.scene_messages import scene_topics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
CONSOLE_SCRIPTS = set(re.findall(r'"([\w-]+) = [\w.]+:\w+"', (REPO / "setup.py").read_text()))


def launch_file_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text())


def launch_nodes():
    """The launch file's Node calls, and the names it imports from vexkd_ros.launch_arguments
    (the constants and decisions those calls use)."""
    tree = launch_file_tree()
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    imported = {alias.name for n in tree.body
                if isinstance(n, ast.ImportFrom) and n.module == "vexkd_ros.launch_arguments" for alias in n.names}
    return calls, imported


def declared_defaults() -> dict:
    """Each DeclareLaunchArgument's name -> its default_value as source text (None: required)."""
    defaults = {}
    for call in ast.walk(launch_file_tree()):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument":
            name = call.args[0].value if isinstance(call.args[0], ast.Constant) else ast.unparse(call.args[0])
            default = [ast.unparse(k.value) for k in call.keywords if k.arg == "default_value"]
            defaults[name] = default[0] if default else None
    return defaults


def test_every_launched_executable_is_a_console_script_of_this_package():
    calls, imported = launch_nodes()
    ours = [c for c in calls if any(k.arg == "package" and ast.literal_eval(k.value) == "vexkd" for k in c.keywords)]
    assert ours, "the launch file starts no vexkd node"
    assert "EXECUTABLES" in imported
    executables = set(EXECUTABLES.values())
    assert executables == set(NODE_NAMES.values())
    assert executables <= CONSOLE_SCRIPTS


def test_every_parameter_set_is_one_the_node_declares():
    _, imported = launch_nodes()
    assert "given_parameter_arguments" in imported  # the one place the launch file picks parameters
    everyone, cameras = set(PARAMETER_ARGUMENTS), set(CAMERA_PARAMETER_ARGUMENTS)
    assert {"checkpoint", "device", "fixed_frame", "score_threshold", "image_transport"} <= everyone | cameras
    blocks = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())
    assert list(blocks) == ["/**"]  # matches the nodes in any namespace
    for modality, node_name in NODE_NAMES.items():
        declared = set(declared_names(modality))
        assert everyone | (cameras if modality != "lidar" else set()) <= declared, modality
        assert set(blocks["/**"][node_name]["ros__parameters"]) <= declared, node_name
        assert set(blocks["/**"][node_name]["ros__parameters"]["map_classes"]) <= set(MAP_CLASSES)


def test_every_parameter_argument_is_declared_and_no_condition_is_deprecated():
    source = LAUNCH_FILE.read_text()
    declared = set(re.findall(r'DeclareLaunchArgument\("(\w+)"', source))
    assert set(PARAMETER_ARGUMENTS) | set(CAMERA_PARAMETER_ARGUMENTS) <= declared
    # Deprecated since Iron (launch.conditions warns): EqualsSubstitution / PythonExpression instead.
    for deprecated in ("LaunchConfigurationEquals", "LaunchConfigurationNotEquals"):
        assert deprecated not in source


def test_remapped_inputs_are_the_nodes_private_inputs():
    source = LAUNCH_FILE.read_text()
    assert '"~/input/pointcloud"' in source and 'f"~/input/image{i}"' in source and 'f"~/input/camera_info{i}"' in source


# A config/detector.yaml as a user edits it: every value differs from the node's default,
# the shipped YAML's and the launch file's former argument defaults.
EDITED_YAML = {"/**": {
    "lidar_detector": {"ros__parameters": {
        "checkpoint": "/from/yaml/lidar.pt", "backend": "onnxruntime", "device": "cuda", "score_threshold": 0.45,
        "fixed_frame": "odom", "marker_score_threshold": 0.6, "sweeps": 3, "map_classes": ["divider"],
        "tf_timeout": 0.45}},
    "camera_detector": {"ros__parameters": {
        "checkpoint": "/from/yaml/camera.pt", "backend": "onnxruntime", "device": "cuda", "score_threshold": 0.35,
        "fixed_frame": "odom", "marker_score_threshold": 0.55, "image_transport": "raw", "bev_frame": "base_link",
        "tf_timeout": 0.35}},
    "fusion_detector": {"ros__parameters": {
        "checkpoint": "/from/yaml/fusion.pt", "backend": "onnxruntime", "device": "cuda", "score_threshold": 0.25,
        "fixed_frame": "odom", "marker_score_threshold": 0.65, "image_transport": "raw", "max_camera_delay": 0.05,
        "tf_timeout": 0.5}},
}}
# Given on the command line, each unlike the YAML's value.
GIVEN = {"checkpoint": "/given/model.pt", "score_threshold": "0.7", "fixed_frame": "base_link", "tf_timeout": "1.0"}


def launch_arguments(**given: str) -> dict[str, str]:
    """The launch configurations of the arguments the decisions read: unset unless given."""
    unset = {name: UNSET for name in PARAMETER_ARGUMENTS + CAMERA_PARAMETER_ARGUMENTS}
    return unset | {f"image{i}_topic": UNSET for i in range(len(CAMERAS))} | given


def parameters_the_node_gets(config_text: str, arguments: dict[str, str], modality: str) -> dict:
    """What ROS makes of the launch file's `parameters=[yaml, {given: LaunchConfiguration}]`:
    the YAML's block, then each given argument typed as YAML (launch_ros), the later winning (rcl)."""
    parameters = yaml_parameters(config_text, EXECUTABLES[modality])
    for name in given_parameter_arguments(arguments, modality):
        parameters[name] = yaml.safe_load(arguments[name])
    return parameters


def test_parameter_arguments_are_unset_unless_given_and_checkpoint_is_required():
    defaults = declared_defaults()
    assert defaults["checkpoint"] is None
    for name in PARAMETER_ARGUMENTS + CAMERA_PARAMETER_ARGUMENTS:
        assert name == "checkpoint" or defaults[name] == "UNSET", name
    # Unset image topics follow the transport the node will use.
    assert defaults["f'image{i}_topic'"] == "UNSET"


@pytest.mark.parametrize("modality", list(EXECUTABLES))
def test_only_given_arguments_override_the_yaml(modality):
    edited = yaml.safe_dump(EDITED_YAML)
    from_yaml = EDITED_YAML["/**"][EXECUTABLES[modality]]["ros__parameters"]
    arguments = launch_arguments(**GIVEN)
    assert set(given_parameter_arguments(arguments, modality)) == set(GIVEN)
    assert parameters_the_node_gets(edited, arguments, modality) == \
        from_yaml | {"checkpoint": "/given/model.pt", "score_threshold": 0.7, "fixed_frame": "base_link", "tf_timeout": 1.0}
    # Given nothing but the required checkpoint, the node keeps every edited value.
    assert parameters_the_node_gets(edited, launch_arguments(checkpoint="/given/model.pt"), modality) == \
        from_yaml | {"checkpoint": "/given/model.pt"}


def test_unset_image_topics_follow_the_transport_the_node_will_use():
    edited = yaml_parameters(yaml.safe_dump(EDITED_YAML), "camera_detector")
    shipped = yaml_parameters((REPO / "config" / "detector.yaml").read_text(), "camera_detector")
    assert image_topics(launch_arguments(), image_transport(launch_arguments(), edited))[0] == "/CAM_FRONT/image"
    # The shipped YAML keeps the bag's compressed topics, as the former argument defaults did.
    assert image_topics(launch_arguments(), image_transport(launch_arguments(), shipped)) == \
        [f"/{camera}/image/compressed" for camera in CAMERAS]
    given = launch_arguments(image_transport="compressed", image1_topic="/front_right")
    assert image_topics(given, image_transport(given, edited))[:3] == \
        ["/CAM_FRONT/image/compressed", "/front_right", "/CAM_BACK_RIGHT/image/compressed"]
    # A node whose YAML block has no image_transport uses its own default.
    assert image_transport(launch_arguments(), {}) == NODE_IMAGE_TRANSPORT == PARAMETERS["image_transport"][0]


# Run in a subprocess as `ros2 launch` runs a launch file (ros2launch's launch_a_launch_file).
RUN_LAUNCH = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

service = LaunchService()
service.include_launch_description(IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]),
    launch_arguments=[tuple(argument.split(":=", 1)) for argument in sys.argv[2:]]))
sys.exit(service.run())
"""
# The detector executables in the test's install prefix: real rclpy nodes that report what
# ROS gave them (the real nodes stop at once without a trained checkpoint).
STAND_IN_NODE = """
import json
import sys
from pathlib import Path

import rclpy
from rclpy.node import Node

rclpy.init(args=sys.argv)
node = Node("stand_in", automatically_declare_parameters_from_overrides=True)
inputs = ["pointcloud", *[f"image{i}" for i in range(6)], *[f"camera_info{i}" for i in range(6)]]
report = {"parameters": {name: p.value for name, p in node.get_parameters_by_prefix("").items()},
          "inputs": {name: node.resolve_topic_name(f"~/input/{name}") for name in inputs}}
(Path(sys.argv[0]).parent / f"{node.get_name()}.json").write_text(json.dumps(report))
"""


@pytest.fixture
def install_prefix(tmp_path):
    """An ament prefix holding package vexkd with EDITED_YAML as config/detector.yaml and
    stand-in nodes, first on AMENT_PREFIX_PATH for the launch run."""
    try:  # launch.actions: the repo's launch/ directory alone imports as a namespace package `launch`
        import launch.actions  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as error:
        pytest.skip(f"needs launch and launch_ros, which are not on PyPI (a ROS 2 install has them): {error}")
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "vexkd").touch()
    (prefix / "share" / "vexkd" / "config").mkdir(parents=True)
    (prefix / "share" / "vexkd" / "config" / "detector.yaml").write_text(yaml.safe_dump(EDITED_YAML))
    (prefix / "lib" / "vexkd").mkdir(parents=True)
    for executable in EXECUTABLES.values():
        node = prefix / "lib" / "vexkd" / executable
        node.write_text(f"#!{sys.executable}{STAND_IN_NODE}")
        node.chmod(0o755)
    return prefix


def run_launch(prefix: Path, *arguments: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", sys.prefix)])
    return subprocess.run([sys.executable, "-c", RUN_LAUNCH, str(LAUNCH_FILE), *arguments],
                          env=dict(os.environ, AMENT_PREFIX_PATH=path), capture_output=True, text=True, timeout=120)


@pytest.mark.ros  # launch starts stand-in rclpy nodes
@pytest.mark.parametrize("modality", ["lidar", "camera"])
def test_under_real_launch_the_node_gets_the_yaml_values_but_for_the_given_arguments(install_prefix, modality):
    result = run_launch(install_prefix, f"modality:={modality}", "image1_topic:=/front_right",
                        *[f"{name}:={value}" for name, value in GIVEN.items()])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((install_prefix / "lib" / "vexkd" / f"{EXECUTABLES[modality]}.json").read_text())
    expected = parameters_the_node_gets(yaml.safe_dump(EDITED_YAML), launch_arguments(**GIVEN), modality)
    own = {"use_sim_time", "start_type_description_service"}  # every rclpy node declares them
    assert {name: value for name, value in report["parameters"].items() if name not in own} == expected
    inputs = report["inputs"]
    assert inputs["image0"] == ("/CAM_FRONT/image" if modality == "camera" else "/CAM_FRONT/image/compressed")
    assert inputs["image1"] == "/front_right" and inputs["camera_info0"] == "/CAM_FRONT/camera_info"
    assert inputs["pointcloud"] == "/LIDAR_TOP"


def processes_running(path: Path) -> list[int]:
    """The pids of the processes whose command line names something under `path`."""
    pids = []
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and str(path).encode() in (process / "cmdline").read_bytes():
                pids.append(int(process.name))
        except OSError:  # ended while we looked
            pass
    return pids


@pytest.mark.ros
def test_under_real_launch_rviz_without_rviz2_fails_before_any_node_starts(install_prefix, monkeypatch):
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    monkeypatch.setenv("AMENT_PREFIX_PATH", os.environ.get("AMENT_PREFIX_PATH", sys.prefix))
    try:
        get_package_prefix("rviz2")
        pytest.skip("rviz2 is installed here")
    except PackageNotFoundError:
        pass
    result = run_launch(install_prefix, "checkpoint:=/given/model.pt", "rviz:=true")
    # A node launch started would still be running: a stand-in lives for its rclpy import
    # (and launch, exiting on an error, does not always log the start, nor stop the node).
    orphans = processes_running(install_prefix)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    output = result.stdout + result.stderr
    assert orphans == [], output
    assert result.returncode == 1, output
    assert "rviz:=true needs the rviz2 package, which is not installed" in output


def test_rviz_config_shows_cloud_markers_grids_and_six_cameras():
    config = yaml.safe_load((REPO / "rviz" / "vexkd.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    kinds = [d["Class"].split("/")[-1] for d in displays]
    assert kinds.count("PointCloud2") == 1 and kinds.count("Image") == 6
    assert kinds.count("Map") == 2 * len(MAP_CLASSES)
    assert kinds.count("MarkerArray") >= 3
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    for node in ("lidar_detector", "camera_detector"):  # the two students `make demo` replays
        assert {f"/{node}/output/map/{name}" for name in MAP_CLASSES} <= topics
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "LIDAR_TOP"


def test_the_point_cloud_size_is_the_one_its_style_draws_with():
    """With Style: Points RViz reads "Size (Pixels)" and ignores "Size (m)" (and the reverse)."""
    clouds = [d for d in ros_rviz.displays() if d["Class"] == "rviz_default_plugins/PointCloud2"]
    for display in clouds:
        used = ros_rviz.point_size_property(display.get("Style", "Flat Squares"))
        unused = ({"Size (m)", "Size (Pixels)"} - {used}).pop()
        assert used in display and unused not in display, display


def test_every_image_display_shows_a_topic_the_bag_publishes():
    """RViz's Image display takes the transport from the topic's last part: the bag's
    CompressedImage topics must be named with /compressed, and no other property helps."""
    images = [d for d in ros_rviz.displays() if d["Class"] == "rviz_default_plugins/Image"]
    published = scene_topics()
    assert len(images) == 6
    for display in images:
        assert set(display) <= ros_rviz.IMAGE_DISPLAY_PROPERTIES, display["Name"]
        assert set(display["Topic"]) <= ros_rviz.TOPIC_PROPERTIES, display["Name"]
        topic = display["Topic"]["Value"]
        assert topic in published, topic
        wanted = "sensor_msgs/msg/Image" if ros_rviz.image_transport(topic) == "raw" else \
            "sensor_msgs/msg/CompressedImage"
        assert published[topic] == wanted, topic


def offered_qos(topic: str):
    """What the bag player or a detector node offers on `topic`."""
    if topic in scene_topics():
        return topic_qos(topic)
    assert any(topic.startswith(f"/{name}/output/") for name in NODE_NAMES.values()), topic
    return OUTPUT_QOS


def test_every_rviz_display_asks_for_a_qos_its_publisher_offers():
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    checked = 0
    for display in ros_rviz.displays():
        if "Topic" not in display:
            continue
        topic = display["Topic"]["Value"]
        compatibility, reason = qos_check_compatible(offered_qos(topic), ros_rviz.requested_qos(display))
        # WARNING only says that a policy is SYSTEM_DEFAULT (liveliness here); ERROR never connects.
        assert compatibility != QoSCompatibility.ERROR, f"{display['Name']} on {topic}: {reason}"
        checked += 1
    assert checked >= 1 + 3 + len(MAP_CLASSES) + 6
