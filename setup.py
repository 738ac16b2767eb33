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
        "console_scripts": [
            "vexkd-data = vexkd_core.data.cli:main",
            "vexkd-train = vexkd_train.cli:main",
            "vexkd-ros = vexkd_ros.cli:main",
            "lidar_detector = vexkd_ros.detector_node:lidar_main",
            "camera_detector = vexkd_ros.detector_node:camera_main",
            "fusion_detector = vexkd_ros.detector_node:fusion_main",
            "bag_player = vexkd_ros.cli:player_main",
        ],
    },
)
