"""Stages that are redone only when what they consumed changed: the experiment's runs and
evaluations, and the demo's steps around them (world, bag, replay, pictures).

A stage has a name, a spec (JSON: its settings and the fingerprints of its inputs, from
vexkd_core.fingerprint) and its outputs. It runs unless an earlier run left every output and a
record of the same spec: `<records>/<name>.json`, which also keeps the seconds it took. The
record is removed before a stage runs, so one that fails half way is never reused. One record
file per stage lets stages in other processes (students trained side by side) keep theirs.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vexkd_core.io import atomic_write_json


@dataclass(frozen=True)
class StageTime:
    """One stage of this run: the seconds it took, and whether it was reused instead (then
    `seconds` are those of the earlier run that made its outputs, NaN if unknown)."""

    name: str
    seconds: float
    reused: bool


def json_file(folder: Path, name: str) -> Path:
    """`<folder>/<name>.json`, the name made safe for a file name."""
    return Path(folder) / (re.sub(r"[^\w.+-]", "_", name) + ".json")


def as_stored(spec):
    """A spec as it reads back from its record: through JSON, so tuples compare equal to lists."""
    return json.loads(json.dumps(spec, default=str))


class Stages:
    def __init__(self, records: Path, announce: bool = True):
        """`announce`: print a line as each stage starts, ends or is reused."""
        self.records, self.announce = Path(records), announce
        self.timings: list[StageTime] = []
        self.started = time.monotonic()

    def _record(self, name: str) -> Path:
        return json_file(self.records, name)

    def say(self, text: str) -> None:
        if self.announce:
            print(f"[stages] {text}", flush=True)

    def elapsed(self) -> float:
        """Wall-clock seconds since this run began: stages side by side overlap, so their
        seconds add up to more than the run took."""
        return time.monotonic() - self.started

    def is_done(self, name: str, spec, outputs: list[Path]) -> bool:
        record = self._record(name)
        return record.is_file() and json.loads(record.read_text())["spec"] == as_stored(spec) and \
            all(Path(path).exists() for path in outputs)

    def seconds(self, name: str) -> float:
        """The seconds a recorded stage took (NaN if it has no record)."""
        record = self._record(name)
        return json.loads(record.read_text()).get("seconds", math.nan) if record.is_file() else math.nan

    def run(self, name: str, spec, outputs: list[Path], action: Callable[[], object]) -> bool:
        """Runs `action` unless an earlier run made `outputs` from the same spec; returns whether it ran."""
        record = self._record(name)
        if self.is_done(name, spec, outputs):
            # A stage many others start from (the LiDAR student) is asked for again and again:
            # the timings list it once.
            if name not in {timing.name for timing in self.timings}:
                self.say(f"{name}: reused from an earlier run")
                self.timings.append(StageTime(name, self.seconds(name), reused=True))
            return False
        self.say(f"{name} ...")
        record.unlink(missing_ok=True)
        started = time.monotonic()
        action()
        seconds = time.monotonic() - started
        self.say(f"{name}: {seconds:.0f} s")
        atomic_write_json(record, {"spec": as_stored(spec), "seconds": seconds})
        self.timings.append(StageTime(name, seconds, reused=False))
        return True

    def kept(self, name: str, spec, stored: Path, compute: Callable[[], dict]) -> dict:
        """`compute()`'s JSON result, kept in `stored` and reused while the spec is the same."""
        self.run(name, spec, [stored], lambda: atomic_write_json(stored, compute()))
        return json.loads(Path(stored).read_text())


    def join(self, timings: list[StageTime]) -> None:
        """Another process's timings of this run (a side-by-side student's), each stage once."""
        for timing in timings:
            if timing.name not in {known.name for known in self.timings}:
                self.timings.append(timing)


def timings_table(timings: list[StageTime], wall_seconds: float) -> list[str]:
    """This run's stages; the total is the wall-clock time this run spent: reused stages show,
    in brackets, the seconds the earlier run that made their outputs took, and are not in it."""
    lines = ["", "## Stage timings", "", "Seconds each stage took in this run (the students train side by side, "
             "one core each). A reused stage did not run: its seconds, in brackets, are those of the earlier "
             "run that made its outputs, and are not in the total, which is this run's wall-clock time (setup "
             "not included).", "", "| stage | seconds | |", "|---|---|---|"]
    lines += [f"| {t.name} | ({t.seconds:.0f}) | reused |" if t.reused else f"| {t.name} | {t.seconds:.0f} | |"
              for t in timings]
    reused = sum(t.reused for t in timings)
    lines.append(f"| total (this run, wall clock) | {wall_seconds:.0f} | {reused} of {len(timings)} reused |")
    return lines
