"""Test-session ROS environment: localhost-only discovery, the user's domain or a random
one, private logs. Set at import, before any test calls rclpy.init(), and inherited by every
process a test starts, so parallel runs on one machine never see each other's topics.

Tiers: every test module declares exactly one of TIERS (pytest.ini) as its module-level
`pytestmark`, or its collection fails; a test marked with another tier is in that one only.
"""
import os
import random
import tempfile
from collections.abc import Mapping

import pytest

from vexkd_ros.environment import default_ros_environment

TIERS = ("unit", "ros", "slow")


def tiers_of(node) -> list[str]:
    return [mark.name for mark in node.own_markers if mark.name in TIERS]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A test module without exactly one tier marker fails to collect, in one line."""
    report = yield
    if type(collector) is pytest.Module and report.passed:
        found = tiers_of(collector)
        if len(found) != 1:
            report.outcome = "failed"
            report.longrepr = (f"{'tiers ' + ' and '.join(found) if found else 'no tier'}: a test module declares "
                               f"exactly one, `pytestmark = pytest.mark.<{'|'.join(TIERS)}>` (see pytest.ini)")
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Before `-m` selects: each test takes its module's tier unless it (or its class) is marked
    with a tier of its own, so `-m unit` leaves out a ros or slow test in a unit module."""
    modules = {}
    for item in items:
        module = item.getparent(pytest.Module)
        if module is None:
            continue
        if module not in modules:
            modules[module] = tiers_of(module)
            module.own_markers[:] = [mark for mark in module.own_markers if mark.name not in TIERS]
        if not any(tiers_of(node) for node in item.listchain() if node is not module) and modules[module]:
            item.add_marker(modules[module][0])


# ROS maps a domain to UDP ports; on Linux only 0..101 stay clear of the ephemeral range.
SAFE_DOMAIN_IDS = range(0, 102)


def session_domain_id(environ: Mapping[str, str]) -> str:
    """The user's ROS_DOMAIN_ID when set (they chose it, e.g. to keep clear of a robot's),
    otherwise a random one, so two test runs on one host rarely share a domain."""
    return environ.get("ROS_DOMAIN_ID") or str(random.SystemRandom().choice(SAFE_DOMAIN_IDS))


USER_DOMAIN_ID = os.environ.get("ROS_DOMAIN_ID")
os.environ.update(default_ros_environment())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # forced: tests never talk to other hosts
os.environ["ROS_DOMAIN_ID"] = session_domain_id(os.environ)
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


def run_vexkd_train(*args) -> str:
    """`vexkd-train ARGS` in its own process; the test fails with its stderr if it fails."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([str(Path(sys.executable).parent / "vexkd-train"), *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="session")
def trained_lidar(tiny_world, tmp_path_factory):
    """model.pt of a LiDAR student trained 60 steps on the tiny world's train split (2 sweeps):
    for the checks that need a model that has learned something (its mAP above 0, int8
    ranges calibrated on its training data)."""
    out = tmp_path_factory.mktemp("trained_lidar")
    run_vexkd_train("student", "--modality", "lidar", "--dataroot", tiny_world[0], "--out", out,
                    "--set", "model.lidar.sweeps=2", "--max-steps", 60)
    return out / "model.pt"


@pytest.fixture(scope="session")
def trained_lidar_graphs(trained_lidar, tiny_world, tmp_path_factory):
    """(float graph, int8 graph, the export's stdout) of trained_lidar: `vexkd-train export
    --quantize int8`, calibrated on 2 training frames and checked on 2 others."""
    out = tmp_path_factory.mktemp("trained_lidar_graphs")
    stdout = run_vexkd_train("export", "--checkpoint", trained_lidar, "--out", out, "--quantize", "int8",
                             "--dataroot", tiny_world[0], "--calibration-frames", 2)
    return out / "model.onnx", out / "model.int8.onnx", stdout
