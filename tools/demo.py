"""`make demo`: the whole user journey on the built-in synthetic world, with a report.

Stages run in order and each is skipped when its output from an earlier run is still
valid, so a re-run only redoes what changed. Everything lands under demo/.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
WORLD = DEMO / "world"
BIN = Path(sys.executable).parent


def stage(name: str, done: bool, action) -> float:
    """Run one stage unless it is already done; return its seconds."""
    if done:
        print(f"[demo] {name}: reused from an earlier run")
        return 0.0
    print(f"[demo] {name} ...", flush=True)
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    print(f"[demo] {name}: {seconds:.0f} s", flush=True)
    return seconds


def source_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def world_is_current(stamp: Path, settings: dict) -> bool:
    return stamp.is_file() and json.loads(stamp.read_text()) == settings


def main() -> int:
    sys.path.insert(0, str(REPO))
    from vexkd_core.data.synthetic import demo_config
    from vexkd_core.io import atomic_write_json, atomic_write_text

    config = demo_config(WORLD)
    # Through JSON, as the stamp is stored, so tuples compare equal to their saved lists. The
    # simulator's source is part of it: a changed simulator writes a new world.
    settings = json.loads(json.dumps({k: v for k, v in asdict(config).items() if k != "workers"}, default=str))
    settings["simulator"] = source_digest(REPO / "vexkd_core" / "data" / "synthetic")
    stamp = DEMO / "world.settings.json"
    timings = {}

    def write_world() -> None:
        arguments = ["synth", "--out", str(WORLD), "--scenes", str(config.scenes),
                     "--val-scenes", str(config.val_scenes), "--samples-per-scene", str(config.samples_per_scene),
                     "--sweeps", str(config.sweeps), "--camera-sweeps", str(config.camera_sweeps),
                     "--image-size", "x".join(map(str, config.image_size)), "--seed", str(config.seed),
                     "--version", config.version, "--workers", str(config.workers)]
        subprocess.run([str(BIN / "vexkd-data"), *arguments], check=True)
        atomic_write_json(stamp, settings)

    timings["synthetic world"] = stage("synthetic world", world_is_current(stamp, settings), write_world)

    picture = DEMO / "sample.png"
    val_sample = str(config.samples_per_scene * (config.scenes - config.val_scenes))  # first val sample

    def render() -> None:
        subprocess.run([str(BIN / "vexkd-data"), "render", "--dataroot", str(WORLD), "--version", config.version,
                        "--sample", val_sample, "--out", str(picture)], check=True)

    world_reused = timings["synthetic world"] == 0.0
    timings["render"] = stage("render a val sample", picture.is_file() and world_reused, render)

    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        nusc = NuScenes(config.version, str(WORLD), verbose=False)
    per_class = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    per_class.pop(None, None)
    lines = ["# VeXKD demo report", "",
             "## Synthetic world", "",
             f"{len(nusc.scene)} scenes ({config.val_scenes} val), {len(nusc.sample)} samples, "
             f"{len(nusc.sample_data)} sensor frames, {len(nusc.sample_annotation)} boxes. "
             f"Written in the nuScenes schema and read back here with nuscenes-devkit.", "",
             "| class | boxes |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in sorted(per_class.items())]
    lines += ["", "![A val sample: BEV with map layers, LiDAR and GT boxes; the six cameras](sample.png)", "",
              "## Stage timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    atomic_write_text(DEMO / "report.md", "\n".join(lines) + "\n")
    print(f"[demo] report: {DEMO / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
