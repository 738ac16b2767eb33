"""The launch file, parameter YAML and RViz config agree with the code (launch/launch_ros
are not on PyPI, so the launch file is read as Python source, not executed)."""
import ast
import re
from pathlib import Path

import yaml

from vexkd_core.classes import MAP_CLASSES
from vexkd_ros.detector_node import NODE_NAMES
from vexkd_ros.detector_parameters import declared_names

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
    source = (REPO / "launch" / "perception.launch.py").read_text()
    inline = set(re.findall(r'"(\w+)": LaunchConfiguration', source))
    assert inline == {"checkpoint", "device"}
    blocks = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())
    for modality, node_name in NODE_NAMES.items():
        declared = set(declared_names(modality))
        assert inline <= declared
        assert set(blocks[node_name]["ros__parameters"]) <= declared, node_name
        assert set(blocks[node_name]["ros__parameters"]["map_classes"]) <= set(MAP_CLASSES)


def test_remapped_inputs_are_the_nodes_private_inputs():
    source = (REPO / "launch" / "perception.launch.py").read_text()
    assert '"~/input/pointcloud"' in source and 'f"~/input/image{i}"' in source and 'f"~/input/camera_info{i}"' in source


def test_rviz_config_shows_cloud_markers_grids_and_six_cameras():
    config = yaml.safe_load((REPO / "rviz" / "vexkd.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    kinds = [d["Class"].split("/")[-1] for d in displays]
    assert kinds.count("PointCloud2") == 1 and kinds.count("Image") == 6 and kinds.count("Map") == len(MAP_CLASSES)
    assert kinds.count("MarkerArray") >= 3
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    assert {f"/lidar_detector/output/map/{name}" for name in MAP_CLASSES} <= topics
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "LIDAR_TOP"
