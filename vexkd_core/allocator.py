"""glibc's allocator in vexkd processes, on request: large blocks from mmap, back at free.

Training at the `nuscenes` preset allocates and frees blocks of many large sizes every
step (images, depth volumes, BEV maps, their gradients). With glibc's defaults, each block
freed from mmap raises the mmap threshold (the "dynamic threshold", up to 32 MiB), so the
next blocks of that size come from the heaps instead; the heaps fragment, and what glibc has
freed but keeps grows step after step (1.3 -> 3.1 GB on the camera student, issue 35), and
the peak resident memory with it. A fixed threshold (mallopt M_MMAP_THRESHOLD, which also
stops the dynamic one) keeps blocks above it out of the heaps: resident memory between steps
stays with the live tensors and the peak stops climbing, for some step time (each large
block is mapped and faulted in afresh). Measured against glibc's default in one interleaved
run (bench/bench_training_memory.py, bench/results/training_memory.json; camera student,
`nuscenes` preset, 1600x900 world, widths cut, 48 steps): 128 KiB: RSS between steps 0.51x,
peak 0.73x and flat from step 12 to 32, 1.20x step time; 1 MiB: 0.58x, 0.76x, still
climbing, no faster; malloc_trim(0) after every step: 0.51x between steps but peak 0.96x,
still climbing. jemalloc is not pip-installable and needs LD_PRELOAD before the process
starts, which `python -m` and ROS launch files would not get.

The same run put a price on it: teacher and mask generators 1.5x step time (memory 0.67x and
0.45x peak), and at `tiny` 1.95x step time for 0.91x peak. At full width (camera student, 32
steps): RSS between steps 0.23x, peak 0.77x (+3 MB from step 12 to 32, the default +139 MB),
1.30x step time. So it is opt-in, for a run whose memory is tight: `VEXKD_ALLOCATOR=fixed-mmap`
(with it the teacher trains at batch 4 and the mask generators at batch 5 in 23 GB at full width;
docs/nuscenes_recipe.md). `use_chosen_allocator()` is called by every
entry point (vexkd_core.cli.run_cli, which vexkd-data, vexkd-train and vexkd-ros share, and
vexkd_ros.detector_node.run) before the big allocations, and applies it only then. It changes
nothing
- unless VEXKD_ALLOCATOR=fixed-mmap: glibc's defaults;
- where the C library is not glibc (musl, macOS, Windows): mallopt is glibc's;
- for a setting the user made with glibc's own variables (MALLOC_MMAP_THRESHOLD_, or
  glibc.malloc.mmap_threshold in GLIBC_TUNABLES): the user's wins.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass

M_MMAP_THRESHOLD = -3  # mallopt parameter number, glibc malloc.h
# Blocks from 128 KiB up are mmapped and unmapped at free: glibc's own starting threshold,
# held there (chosen by measurement; see above).
MMAP_THRESHOLD = 128 * 1024
CHOICE = "VEXKD_ALLOCATOR"
FIXED_MMAP = "fixed-mmap"


@dataclass(frozen=True)
class AllocatorSetting:
    applied: bool
    reason: str


_applied: AllocatorSetting | None = None


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # glibc only: musl has no such name
            return None
    except (ValueError, OSError):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def user_setting(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The environment variable by which the user set the mmap threshold, or None."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return "MALLOC_MMAP_THRESHOLD_"
    if "glibc.malloc.mmap_threshold" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def use_chosen_allocator() -> AllocatorSetting:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD for this process (once; later calls
    return what the first did). Says whether it did and, if not, why not."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> AllocatorSetting:
    if os.environ.get(CHOICE, "").lower() != FIXED_MMAP:
        return AllocatorSetting(False, f"glibc's own defaults ({CHOICE}={FIXED_MMAP} fixes the mmap threshold)")
    variable = user_setting()
    if variable:
        return AllocatorSetting(False, f"{variable} is set: the user's setting wins")
    libc = glibc()
    if libc is None:
        return AllocatorSetting(False, "not glibc: mallopt is glibc's, the allocator here is left as it is")
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return AllocatorSetting(False, "glibc refused mallopt(M_MMAP_THRESHOLD)")
    return AllocatorSetting(True, f"glibc mmap threshold fixed at {MMAP_THRESHOLD // 1024} KiB")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_figures() -> dict[str, int] | None:
    """glibc's own account (mallinfo2, glibc >= 2.33) in bytes: `live` in its heaps,
    `mmapped` (blocks above the threshold, live too), `kept` (freed, still held in its
    heaps); None elsewhere."""
    libc = glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"live": info.uordblks, "mmapped": info.hblkhd, "kept": info.fordblks}
