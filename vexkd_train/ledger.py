"""A suite's finished students, kept in the repository so that a new machine resumes the suite.

The mask study runs for many hours over several sessions, and a session may start on a new
machine with none of the last one's files. Checkpoints are too large to commit; what the tables
need of a student is a few kilobytes: its metrics on each world (and on the test world's parts),
which worlds those were (by contents) and the seconds it took. The ledger keeps that, one JSON
file per run, under the run's name.

An entry is reused only for the same run: it is keyed by the run's portable spec, its spec with
each input file (teacher, mask generators, pretrained image stages) known by its contents and
each dataset by its contents (vexkd_core.fingerprint.content_stamp, dataset_contents).
The new machine writes the worlds and trains the teachers and generators again; seeded training
makes them byte for byte the same on a machine with the same cores and torch build
(tests/test_ledger.py), so their students' entries match; a teacher that came out different
redoes every student of it. An entry that lacks an evaluation asked for, or made it on another
world, is not used either: the student trains again and its entry is replaced.
"""
from __future__ import annotations

import json
from pathlib import Path

from vexkd_core.io import atomic_write_json
from vexkd_train.stages import as_stored, json_file

FORMAT = 1


class Ledger:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def results(self, name: str, spec: dict) -> dict | None:
        """The run's results ({tag: metrics, "step_seconds": ...}), or None unless an entry of this
        name was made from the same portable spec."""
        path = json_file(self.folder, name)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"the ledger's entry {path} is not JSON ({error}): restore it from git") from None
        if entry.get("format") != FORMAT or entry.get("spec") != as_stored(spec):
            return None
        return entry["results"]

    def keep(self, name: str, spec: dict, results: dict) -> Path:
        """Records a finished run; an earlier entry of the name (another spec) is replaced."""
        entry = {"format": FORMAT, "run": name, "spec": as_stored(spec), "results": results}
        return atomic_write_json(json_file(self.folder, name), entry)
