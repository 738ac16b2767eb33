"""VeXKD perception: one detector node (LiDAR, camera or fusion) on nuScenes-style topics.

    ros2 launch vexkd perception.launch.py modality:=lidar checkpoint:=/path/model.pt rviz:=true

Topic arguments remap the node's private inputs, so a robot with other topic names needs
no code change. Every parameter the node takes is in config/detector.yaml.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, LaunchConfigurationEquals
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
EXECUTABLES = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("modality", default_value="lidar", choices=list(EXECUTABLES),
                              description="which model: lidar or camera student, or the fusion teacher"),
        DeclareLaunchArgument("checkpoint", description="model.pt whose modality matches"),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("pointcloud_topic", default_value="/LIDAR_TOP"),
        DeclareLaunchArgument("rviz", default_value="false"),
        *[DeclareLaunchArgument(f"image{i}_topic", default_value=f"/{camera}/image/compressed")
          for i, camera in enumerate(CAMERAS)],
        *[DeclareLaunchArgument(f"camera_info{i}_topic", default_value=f"/{camera}/camera_info")
          for i, camera in enumerate(CAMERAS)],
    ]
    parameters = [PathJoinSubstitution([FindPackageShare("vexkd"), "config", "detector.yaml"]),
                  {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device")}]
    remappings = [("~/input/pointcloud", LaunchConfiguration("pointcloud_topic"))]
    remappings += [(f"~/input/image{i}", LaunchConfiguration(f"image{i}_topic")) for i in range(len(CAMERAS))]
    remappings += [(f"~/input/camera_info{i}", LaunchConfiguration(f"camera_info{i}_topic"))
                   for i in range(len(CAMERAS))]
    detectors = [Node(package="vexkd", executable=executable, name=executable, output="screen",
                      parameters=parameters, remappings=remappings,
                      condition=LaunchConfigurationEquals("modality", modality))
                 for modality, executable in EXECUTABLES.items()]
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2",
                arguments=["-d", PathJoinSubstitution([FindPackageShare("vexkd"), "rviz", "vexkd.rviz"])],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription([*arguments, *detectors, rviz])
