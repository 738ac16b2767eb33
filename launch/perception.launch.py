"""VeXKD perception: one detector node (LiDAR, camera or fusion) on nuScenes-style topics.

    ros2 launch vexkd perception.launch.py modality:=lidar checkpoint:=/path/model.pt rviz:=true
    ros2 launch vexkd perception.launch.py modality:=lidar backend:=onnxruntime checkpoint:=/path/model.onnx

Topic arguments remap the node's private inputs, so a robot with other topic names needs
no code change. Every parameter the node takes is in config/detector.yaml; the parameter
arguments below override it only when given (see vexkd_ros/launch_arguments.py).
"""
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from vexkd_ros.launch_arguments import (CAMERAS, EXECUTABLES, UNSET, given_parameter_arguments, image_topics,
                                        image_transport, yaml_parameters)

FROM_YAML = "; unset: config/detector.yaml's"


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("modality", default_value="lidar", choices=list(EXECUTABLES),
                              description="which model: lidar or camera student, or the fusion teacher"),
        DeclareLaunchArgument("checkpoint", description="model.pt whose modality matches (the .onnx with "
                                                        "backend:=onnxruntime)"),
        DeclareLaunchArgument("backend", default_value=UNSET, choices=[UNSET, "torch", "onnxruntime"],
                              description="torch serves a .pt; onnxruntime a graph from vexkd-train export"
                                          + FROM_YAML + ", else torch"),
        DeclareLaunchArgument("device", default_value=UNSET, choices=[UNSET, "cpu", "cuda"],
                              description="cpu or cuda" + FROM_YAML + ", else cpu"),
        DeclareLaunchArgument("fixed_frame", default_value=UNSET,
                              description="world-fixed TF frame past sweeps and images move through (e.g. odom)"
                                          + FROM_YAML),
        DeclareLaunchArgument("score_threshold", default_value=UNSET,
                              description="minimum detection score (a float, -1.0: the checkpoint's own)" + FROM_YAML),
        DeclareLaunchArgument("marker_score_threshold", default_value=UNSET,
                              description="minimum score of the boxes drawn in ~/output/markers (a float)" + FROM_YAML),
        DeclareLaunchArgument("tf_timeout", default_value=UNSET,
                              description="seconds an input waits for /tf at its stamp (a lagging localiser), "
                                          "0 to 2" + FROM_YAML),
        DeclareLaunchArgument("image_transport", default_value=UNSET, choices=[UNSET, "compressed", "raw"],
                              description="camera and fusion: CompressedImage or Image inputs" + FROM_YAML),
        DeclareLaunchArgument("pointcloud_topic", default_value="/LIDAR_TOP"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz (needs rviz2 installed)"),
        *[DeclareLaunchArgument(f"image{i}_topic", default_value=UNSET,
                                description=f"unset: /{camera}/image, with /compressed for the compressed transport")
          for i, camera in enumerate(CAMERAS)],
        *[DeclareLaunchArgument(f"camera_info{i}_topic", default_value=f"/{camera}/camera_info")
          for i, camera in enumerate(CAMERAS)],
    ]
    # Nodes are made once the arguments are known: which ones were given decides their parameters.
    return LaunchDescription([*arguments, OpaqueFunction(function=nodes_to_launch)])


def nodes_to_launch(context):
    """The detector of the chosen modality, and RViz if asked for. A missing rviz2 fails
    here, before any node starts: failing at RViz's own start left the detector running
    after launch had exited."""
    with_rviz = IfCondition(LaunchConfiguration("rviz")).evaluate(context)
    if with_rviz:
        require_rviz2()
    nodes = [detector(context)]
    if with_rviz:
        nodes.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                          arguments=["-d", PathJoinSubstitution([FindPackageShare("vexkd"), "rviz", "vexkd.rviz"])]))
    return nodes


def require_rviz2():
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        raise RuntimeError("rviz:=true needs the rviz2 package, which is not installed "
                           "(apt install ros-$ROS_DISTRO-rviz2, or leave rviz:=false)") from None


def detector(context):
    arguments = context.launch_configurations
    modality = arguments["modality"]
    executable = EXECUTABLES[modality]
    config = PathJoinSubstitution([FindPackageShare("vexkd"), "config", "detector.yaml"]).perform(context)
    transport = image_transport(arguments, yaml_parameters(Path(config).read_text(), executable))
    remappings = [("~/input/pointcloud", arguments["pointcloud_topic"])]
    remappings += [(f"~/input/image{i}", topic) for i, topic in enumerate(image_topics(arguments, transport))]
    remappings += [(f"~/input/camera_info{i}", arguments[f"camera_info{i}_topic"]) for i in range(len(CAMERAS))]
    # LaunchConfiguration, not the string: launch_ros then types each value as YAML, as
    # `-p name:=value` does (0.5 a float, odom a string).
    given = {name: LaunchConfiguration(name) for name in given_parameter_arguments(arguments, modality)}
    return Node(package="vexkd", executable=executable, name=executable, output="screen",
                parameters=[config, given], remappings=remappings)
