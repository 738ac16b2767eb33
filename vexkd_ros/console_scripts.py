"""The entry points of every console script in setup.py: each imports its command only
when run, and a Ctrl-C during those imports ends the process with one line, exit 130.

torch and rclpy take seconds to import. A SIGINT in that time (the user's Ctrl-C, or
`ros2 launch` stopping its nodes, which with the terminal's own makes two) would otherwise
print Python's KeyboardInterrupt traceback from deep inside an import. This module imports
nothing heavy itself, and commands are named as strings, so no package is imported before
the guard is in place (and vexkd_ros does not import vexkd_train).

Exit 130 (128 + SIGINT) is what shells report for a process Ctrl-C stopped and what
vexkd_core.cli.run_cli already returns for an interrupted command: a caller (a script, a
launch file) must not take an interrupted start for a finished run.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import NoReturn

INTERRUPTED = 130


def _interrupted_message() -> str:
    return f"{os.path.basename(sys.argv[0])}: interrupted\n"


def _exit_at_once(signum: int, frame: object) -> NoReturn:
    """SIGINT handler while importing: os._exit unwinds nothing, so a second SIGINT close
    behind the first finds no Python code left to interrupt (and nothing is half-written:
    no command has run yet)."""
    os.write(sys.stderr.fileno(), _interrupted_message().encode())
    os._exit(INTERRUPTED)


def _run(command: str) -> int:
    """Import `module:function` with SIGINT ending the process, then call it with Python's
    usual KeyboardInterrupt back, so the command cleans up after itself as it always has
    (run_cli's "interrupted", a node's shutdown)."""
    module, function = command.split(":")
    usual = signal.getsignal(signal.SIGINT)
    # Not when SIGINT is ignored (`nohup`, `&` in a script): the process stays deaf to it.
    if usual is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_at_once)
    try:
        main = getattr(importlib.import_module(module), function)
        signal.signal(signal.SIGINT, usual)
        return main()
    except KeyboardInterrupt:  # one the command's own handling missed, e.g. in rclpy.init()
        sys.stderr.write(_interrupted_message())
        return INTERRUPTED


def vexkd_data() -> int:
    return _run("vexkd_core.data.cli:main")


def vexkd_train() -> int:
    return _run("vexkd_train.cli:main")


def vexkd_ros() -> int:
    return _run("vexkd_ros.cli:main")


def bag_player() -> int:
    return _run("vexkd_ros.cli:player_main")


def lidar_detector() -> int:
    return _run("vexkd_ros.detector_node:lidar_main")


def camera_detector() -> int:
    return _run("vexkd_ros.detector_node:camera_main")


def fusion_detector() -> int:
    return _run("vexkd_ros.detector_node:fusion_main")
