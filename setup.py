"""ament_python package `vexkd`: installs the three Python packages, data files and CLIs."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vexkd"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["vexkd_core", "vexkd_core.*", "vexkd_train",
                                    "vexkd_train.*", "vexkd_ros", "vexkd_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="VeXKD developers",
    maintainer_email="dev@vexkd.invalid",
    description="VeXKD cross-modal fusion + masked BEV distillation, with ROS 2 nodes",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        # Each imports its command only when run: Ctrl-C during the seconds of torch and
        # rclpy imports then exits 130 with one line instead of a traceback.
        "console_scripts": [
            "vexkd-data = vexkd_ros.console_scripts:vexkd_data",
            "vexkd-train = vexkd_ros.console_scripts:vexkd_train",
            "vexkd-ros = vexkd_ros.console_scripts:vexkd_ros",
            "lidar_detector = vexkd_ros.console_scripts:lidar_detector",
            "camera_detector = vexkd_ros.console_scripts:camera_detector",
            "fusion_detector = vexkd_ros.console_scripts:fusion_detector",
            "bag_player = vexkd_ros.console_scripts:bag_player",
        ],
    },
)
