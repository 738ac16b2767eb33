"""Test-session ROS environment: localhost-only discovery, a random domain, private logs.

Set at import, before any test calls rclpy.init(), and inherited by every process a
test starts, so parallel runs on one machine never see each other's topics.
"""
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from vexkd_ros.environment import default_ros_environment  # noqa: E402

os.environ.update(default_ros_environment())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 200))
os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="vexkd-test-roslog-")


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context for one test, shut down afterwards."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
