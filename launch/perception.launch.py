"""VeXKD perception: one detector node (LiDAR, camera or fusion) on nuScenes-style topics.

    ros2 launch vexkd perception.launch.py modality:=lidar checkpoint:=/path/model.pt rviz:=true
    ros2 launch vexkd perception.launch.py modality:=lidar backend:=onnxruntime checkpoint:=/path/model.onnx

Topic arguments remap the node's private inputs, so a robot with other topic names needs
no code change. Every parameter the node takes is in config/detector.yaml; the arguments
below override the ones a launch usually changes.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
EXECUTABLES = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}
# Launch arguments passed on as parameters of the same name: to every node, and to the nodes with cameras.
PARAMETER_ARGUMENTS = ("checkpoint", "backend", "device", "fixed_frame", "score_threshold", "marker_score_threshold")
CAMERA_PARAMETER_ARGUMENTS = ("image_transport",)


def generate_launch_description():
    # /CAM_FRONT/image/compressed for compressed, /CAM_FRONT/image for raw, unless given.
    transport_suffix = PythonExpression(["'/compressed' if '", LaunchConfiguration("image_transport"),
                                         "' == 'compressed' else ''"])
    arguments = [
        DeclareLaunchArgument("modality", default_value="lidar", choices=list(EXECUTABLES),
                              description="which model: lidar or camera student, or the fusion teacher"),
        DeclareLaunchArgument("checkpoint", description="model.pt whose modality matches (the .onnx with "
                                                        "backend:=onnxruntime)"),
        DeclareLaunchArgument("backend", default_value="torch", choices=["torch", "onnxruntime"],
                              description="torch serves a .pt; onnxruntime a graph from vexkd-train export"),
        DeclareLaunchArgument("device", default_value="cpu", choices=["cpu", "cuda"]),
        DeclareLaunchArgument("fixed_frame", default_value="map",
                              description="world-fixed TF frame past sweeps and images move through (e.g. odom)"),
        DeclareLaunchArgument("score_threshold", default_value="-1.0",
                              description="minimum detection score (a float); -1.0: the checkpoint's own"),
        DeclareLaunchArgument("marker_score_threshold", default_value="0.3",
                              description="minimum score of the boxes drawn in ~/output/markers (a float)"),
        DeclareLaunchArgument("image_transport", default_value="compressed", choices=["compressed", "raw"],
                              description="camera and fusion: CompressedImage or Image inputs"),
        DeclareLaunchArgument("pointcloud_topic", default_value="/LIDAR_TOP"),
        DeclareLaunchArgument("rviz", default_value="false"),
        *[DeclareLaunchArgument(f"image{i}_topic", default_value=[f"/{camera}/image", transport_suffix])
          for i, camera in enumerate(CAMERAS)],
        *[DeclareLaunchArgument(f"camera_info{i}_topic", default_value=f"/{camera}/camera_info")
          for i, camera in enumerate(CAMERAS)],
    ]
    config = PathJoinSubstitution([FindPackageShare("vexkd"), "config", "detector.yaml"])
    remappings = [("~/input/pointcloud", LaunchConfiguration("pointcloud_topic"))]
    remappings += [(f"~/input/image{i}", LaunchConfiguration(f"image{i}_topic")) for i in range(len(CAMERAS))]
    remappings += [(f"~/input/camera_info{i}", LaunchConfiguration(f"camera_info{i}_topic"))
                   for i in range(len(CAMERAS))]
    detectors = []
    for modality, executable in EXECUTABLES.items():
        # Only the parameters this node declares: the LiDAR node has no image_transport.
        names = PARAMETER_ARGUMENTS + (CAMERA_PARAMETER_ARGUMENTS if modality != "lidar" else ())
        detectors.append(Node(package="vexkd", executable=executable, name=executable, output="screen",
                              parameters=[config, {name: LaunchConfiguration(name) for name in names}],
                              remappings=remappings,
                              condition=IfCondition(EqualsSubstitution(LaunchConfiguration("modality"), modality))))
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2",
                arguments=["-d", PathJoinSubstitution([FindPackageShare("vexkd"), "rviz", "vexkd.rviz"])],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription([*arguments, *detectors, rviz])
