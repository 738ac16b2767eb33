"""Build the ROS message packages that PyPI lacks (vision_msgs, tf2_msgs, autoware_perception_msgs,
autoware_internal_debug_msgs) into this venv.

Run with the venv's interpreter. A package that already imports (a real ROS install,
or an earlier build) is left alone, so a sourced Jazzy keeps its own messages.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PACKAGES = ("vision_msgs", "tf2_msgs", "autoware_perception_msgs", "autoware_internal_debug_msgs")
# Include directories of the machine that built the ROS wheels, baked into their CMake exports.
WHEEL_BUILD_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
WHEEL_BUILD_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def importable(package: str) -> bool:
    try:
        importlib.import_module(f"{package}.msg")
        return True
    except ImportError:
        return False


def repoint_cmake_exports(prefix: Path) -> None:
    """Point the wheels' CMake exports at this venv's Python and numpy headers."""
    import numpy

    python_include = sysconfig.get_paths()["include"]
    for export in (prefix / "share").glob("*/cmake/*Export*.cmake"):
        text = export.read_text()
        if WHEEL_BUILD_PYTHON_INCLUDE not in text and WHEEL_BUILD_NUMPY_INCLUDE not in text:
            continue
        text = text.replace(WHEEL_BUILD_NUMPY_INCLUDE, numpy.get_include())
        export.write_text(text.replace(WHEEL_BUILD_PYTHON_INCLUDE, python_include))


def build(package: str, source: Path, prefix: Path) -> None:
    env = dict(os.environ)
    for leaked in ("LD_LIBRARY_PATH", "PYTHONPATH", "CMAKE_PREFIX_PATH"):
        env.pop(leaked, None)
    env["AMENT_PREFIX_PATH"] = str(prefix)
    env["PATH"] = f"{prefix / 'bin'}:{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix=f"build-{package}-") as build_dir:
        steps = [
            ["cmake", "-S", str(source), "-B", build_dir, "-DBUILD_TESTING=OFF",
             f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DCMAKE_PREFIX_PATH={prefix}",
             f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"],
            ["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)],
            ["cmake", "--install", build_dir],
        ]
        for step in steps:
            result = subprocess.run(step, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
                raise SystemExit(f"error: building {package} failed at: {' '.join(step[:2])}")


def main() -> None:
    prefix = Path(sys.prefix)
    interfaces = Path(__file__).resolve().parent.parent / "interfaces"
    missing = [p for p in PACKAGES if not importable(p)]
    if not missing:
        return
    repoint_cmake_exports(prefix)
    for package in missing:
        started = time.monotonic()
        print(f"building {package} from interfaces/{package} into {prefix} ...", flush=True)
        build(package, interfaces / package, prefix)
        importlib.invalidate_caches()
        if not importable(package):
            raise SystemExit(f"error: {package} was built but `import {package}.msg` still fails")
        print(f"built {package} in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
