"""The package builds and installs the way a ROS 2 user builds it: `colcon build`."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_colcon_build_installs_package_scripts_and_share_files(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    environment = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix)
    result = subprocess.run(
        [str(colcon), "build", "--base-paths", str(REPO), "--packages-select", "vexkd",
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--event-handlers", "console_direct-"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prefix = tmp_path / "install" / "vexkd"
    # `ros2 run vexkd <exe>` looks in lib/<package>; ament finds the package by its marker.
    assert (prefix / "lib" / "vexkd" / "vexkd-data").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "vexkd").is_file()
    for shipped in ("package.xml", "config/fastdds.xml"):
        assert (prefix / "share" / "vexkd" / shipped).is_file(), shipped
    # The nodes' ROS-free runtime is a subpackage of the core library: find_packages installs it.
    assert list(prefix.glob("lib/python*/site-packages/vexkd_core/runtime/pipeline.py")), "vexkd_core.runtime"
    shutil.rmtree(tmp_path / "build")
