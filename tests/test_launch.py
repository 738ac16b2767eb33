"""The launch file, parameter YAML and RViz config agree with the code (launch/launch_ros
are not on PyPI, so the launch file is read as Python source, not executed; RViz is not
either, so tests/ros_rviz.py says what its displays do with the config)."""
import ast
import re
from pathlib import Path

import ros_rviz
import yaml

from vexkd_core.classes import MAP_CLASSES
from vexkd_ros.detector_node import NODE_NAMES
from vexkd_ros.node_outputs import OUTPUT_QOS
from vexkd_ros.detector_parameters import declared_names
from vexkd_ros.player import topic_qos
from vexkd_ros.scene_messages import scene_topics

REPO = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPTS = set(re.findall(r'"([\w-]+) = [\w.]+:\w+"', (REPO / "setup.py").read_text()))


def launch_nodes():
    tree = ast.parse((REPO / "launch" / "perception.launch.py").read_text())
    constants = {}
    for node in tree.body:  # module-level dict/tuple constants the Node calls iterate over
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    return calls, constants


def test_every_launched_executable_is_a_console_script_of_this_package():
    calls, constants = launch_nodes()
    ours = [c for c in calls if any(k.arg == "package" and ast.literal_eval(k.value) == "vexkd" for k in c.keywords)]
    assert ours, "the launch file starts no vexkd node"
    executables = set(constants["EXECUTABLES"].values())
    assert executables == set(NODE_NAMES.values())
    assert executables <= CONSOLE_SCRIPTS


def test_every_parameter_set_is_one_the_node_declares():
    _, constants = launch_nodes()
    everyone, cameras = set(constants["PARAMETER_ARGUMENTS"]), set(constants["CAMERA_PARAMETER_ARGUMENTS"])
    assert {"checkpoint", "device", "fixed_frame", "score_threshold", "image_transport"} <= everyone | cameras
    blocks = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())
    assert list(blocks) == ["/**"]  # matches the nodes in any namespace
    for modality, node_name in NODE_NAMES.items():
        declared = set(declared_names(modality))
        assert everyone | (cameras if modality != "lidar" else set()) <= declared, modality
        assert set(blocks["/**"][node_name]["ros__parameters"]) <= declared, node_name
        assert set(blocks["/**"][node_name]["ros__parameters"]["map_classes"]) <= set(MAP_CLASSES)


def test_every_parameter_argument_is_declared_and_no_condition_is_deprecated():
    source = (REPO / "launch" / "perception.launch.py").read_text()
    _, constants = launch_nodes()
    declared = set(re.findall(r'DeclareLaunchArgument\("(\w+)"', source))
    assert set(constants["PARAMETER_ARGUMENTS"]) | set(constants["CAMERA_PARAMETER_ARGUMENTS"]) <= declared
    # Deprecated since Iron (launch.conditions warns): EqualsSubstitution / PythonExpression instead.
    for deprecated in ("LaunchConfigurationEquals", "LaunchConfigurationNotEquals"):
        assert deprecated not in source


def test_remapped_inputs_are_the_nodes_private_inputs():
    source = (REPO / "launch" / "perception.launch.py").read_text()
    assert '"~/input/pointcloud"' in source and 'f"~/input/image{i}"' in source and 'f"~/input/camera_info{i}"' in source


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
