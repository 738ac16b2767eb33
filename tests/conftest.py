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


# A small synthetic world shared by the data, model and ROS tests: 1 train + 2 val scenes.
TINY_WORLD = dict(scenes=3, val_scenes=2, samples_per_scene=4, sweeps=2, camera_sweeps=1,
                  image_size=(320, 180), seed=11, workers=2)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """(dataroot, SynthConfig) of the tiny synthetic world, written once per test session."""
    from vexkd_core.data.synthetic import SynthConfig, write_dataset

    config = SynthConfig(out=tmp_path_factory.mktemp("tiny_world"), **TINY_WORLD)
    write_dataset(config, progress=False)
    return config.out, config


@pytest.fixture(scope="session")
def tiny_nusc(tiny_world):
    import contextlib
    import io

    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        return NuScenes(version=tiny_world[1].version, dataroot=str(tiny_world[0]), verbose=False)
