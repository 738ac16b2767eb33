"""The allocator setting of vexkd processes (vexkd_core/allocator.py, issue 35) and the
probes of bench/bench_training_memory.py. Nothing here is timed.

Whether glibc's mmap threshold is fixed is read back by behaviour, in a fresh process: with
glibc's dynamic threshold, freeing a 4 MiB mmapped block raises the threshold, so a 1 MiB
block after it comes from the heap; with the threshold fixed at 128 KiB it is mmapped.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vexkd_core import allocator

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
GLIBC = allocator.glibc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")

# Run in the child after the entry point: is a 1 MiB block mmapped after a 4 MiB one was freed?
READ_BACK = """
import ctypes, json
from vexkd_core.allocator import glibc, malloc_figures
libc = glibc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = malloc_figures()["mmapped"]
block = libc.malloc(1 << 20)
mmapped = malloc_figures()["mmapped"] - before >= 1 << 20
libc.free(block)
print(json.dumps({"threshold_fixed": mmapped}))
"""


def threshold_fixed(entry: str, env: dict | None = None) -> bool:
    """Runs `entry` (code that reaches an entry point) then READ_BACK in a fresh process."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("MALLOC_") and key not in ("VEXKD_ALLOCATOR", "GLIBC_TUNABLES")}
    result = subprocess.run([sys.executable, "-c", entry + READ_BACK], capture_output=True, text=True, cwd=REPO,
                            env={**environ, **(env or {})}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["threshold_fixed"]


ASKED = {"VEXKD_ALLOCATOR": "fixed-mmap"}
# The shared entry of vexkd-data, vexkd-train and vexkd-ros: run_cli with a command that does nothing.
RUN_CLI = """
from vexkd_core.cli import OneLineParser, run_cli
parser = OneLineParser(prog="x")
parser.add_subparsers(dest="command").add_parser("nothing")
assert run_cli(parser, {"nothing": lambda args: None}, ["nothing"]) == 0
"""


@needs_glibc
def test_without_the_entry_point_or_unasked_glibc_keeps_its_dynamic_threshold():
    assert not threshold_fixed("", ASKED)
    assert not threshold_fixed(RUN_CLI)  # opt-in: it costs step time (allocator.py)


@needs_glibc
def test_the_shared_cli_entry_fixes_the_threshold_when_asked():
    assert threshold_fixed(RUN_CLI, ASKED)


@needs_glibc
def test_python_m_vexkd_train_reaches_the_setting_before_parsing():
    # `python -m vexkd_train.cli` and the console script both end in run_cli, which sets
    # the allocator before parsing (--help exits in the parse).
    entry = "from vexkd_train.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    assert threshold_fixed(entry, ASKED)


@needs_glibc
def test_a_detector_node_sets_it_before_ros_starts():
    # `python -m vexkd_ros.detector_node` and the console scripts call run(); stopped at rclpy.init.
    entry = ("import vexkd_ros.detector_node as node\n"
             "def stop(args):\n    raise SystemExit(0)\n"
             "node.rclpy.init = stop\n"
             "try:\n    node.run('lidar', [])\nexcept SystemExit:\n    pass\n")
    assert threshold_fixed(entry, ASKED)


@needs_glibc
@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": str(8 << 20)},
                                 {"GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={8 << 20}"}])
def test_the_users_own_setting_wins(env):
    assert not threshold_fixed(RUN_CLI, ASKED | env)


def test_the_reason_is_said_when_nothing_is_set(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("VEXKD_ALLOCATOR", raising=False)
    assert "glibc's own defaults (VEXKD_ALLOCATOR=fixed-mmap" in allocator._apply().reason
    monkeypatch.setenv("VEXKD_ALLOCATOR", "fixed-mmap")
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    setting = allocator._apply()
    assert not setting.applied and "not glibc" in setting.reason
    assert allocator.malloc_figures() is None
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert "user's setting wins" in allocator._apply().reason


@needs_glibc
def test_the_bench_probes_read_memory_and_glibcs_account():
    sys.path.insert(0, str(REPO / "bench"))
    import torch
    from bench_training_memory import StepProbe, probe, summary
    from torch.optim.optimizer import register_optimizer_step_post_hook

    row = probe()
    assert {"rss", "rss_anon", "peak", "live", "mmapped", "kept"} <= set(row)
    assert 0 < row["rss_anon"] <= row["rss"] <= row["peak"]
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    step_probe = StepProbe(trim=True)
    handle = register_optimizer_step_post_hook(step_probe)
    try:
        for _ in range(3):
            optimizer.zero_grad()
            (weight - 1).square().sum().backward()
            optimizer.step()
    finally:
        handle.remove()
    assert len(step_probe.rows) == 3
    figures = summary(step_probe.rows)
    assert figures["steps"] == 3 and figures["peak_after_12_mb"] is None
    assert figures["rss_anon_over_live"] > 0 and figures["live_malloc_mb"] > 0
