"""The ROS environment vexkd processes run in unless the user says otherwise."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROFILE_NAME = "fastdds.xml"
OLD_FAST_DDS_DISTROS = ("humble", "iron", "jazzy")


def fastdds_profile_path() -> Path:
    """The shipped Fast DDS profile: the source tree's, else the installed share/vexkd one."""
    source_tree = Path(__file__).resolve().parent.parent / "config" / PROFILE_NAME
    if source_tree.is_file():
        return source_tree
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("vexkd")) / "config" / PROFILE_NAME


def default_ros_environment() -> dict[str, str]:
    """Variables a vexkd process needs; values already set by the user win."""
    profile = str(fastdds_profile_path())
    defaults = {
        # Discovery stays on this host; a robot spanning hosts sets SUBNET itself.
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": profile,
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    if os.environ.get("ROS_DISTRO", "kilted") in OLD_FAST_DDS_DISTROS:
        # These read only the old name; Kilted reads the new one and warns about the old.
        defaults["FASTRTPS_DEFAULT_PROFILES_FILE"] = profile
    if "ROS_LOG_DIR" not in os.environ and not os.environ.get("HOME"):
        # rclpy.init fails when neither is set.
        defaults["ROS_LOG_DIR"] = str(Path(tempfile.gettempdir()) / "vexkd-ros-logs")
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def apply_default_ros_environment() -> None:
    """Call before rclpy.init() in every vexkd entry point."""
    os.environ.update(default_ros_environment())


def single_threaded_blas() -> None:
    """numpy's BLAS (OpenBLAS) on one thread for the rest of the process.

    A node's numpy work is small products (points times a 4x4); after each one OpenBLAS's
    worker threads keep polling on sched_yield for a while and take a core from the model:
    on 2 cores the onnxruntime LiDAR graph ran 63-67 ms per frame instead of 33-37 until
    they were gone. Set at run time: numpy is loaded long before a node starts.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
