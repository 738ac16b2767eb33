"""The exported graphs' pooling on real-shaped frames: how the rows spread over the layout's
blocks, the pooling's share of each graph under ONNX Runtime, and (with --baseline REV) the
whole graph against the same graph exported by another revision, interleaved in one run.

Frames are the val samples of two synthetic worlds the other benchmarks share (data/bench/,
written once): `tiny` (480x270 images) and `nuscenes` (six 1600x900 cameras, 32-beam LiDAR,
10 sweeps accumulated as the preset reads them). Per preset and modality (the LiDAR and the
camera student, random weights: time does not depend on them):

- rows: points on the grid (LiDAR) or frustum points (camera), occupied cells, rows per
  cell (p50 / p99 / max);
- the fraction of rows on the scatter path: the layout before issue 33 (a block of 8 slots
  per cell, the rest scattered) against this one (every row in a block; only the chunks'
  results of cells past the widest block are scattered), and the slots the blocks fill per row;
- the pooling's share of the graph: ONNX Runtime's profile (the first child of each code
  version), the pooling's nodes against all nodes, 2 intra-op threads;
- graph latency (median over frames x repeats), and with --baseline the same checkpoint
  exported and fed by the baseline's code (a git worktree), the runs interleaved
  (baseline, this, baseline, ...); ratios baseline / this.

    python bench/bench_pooling.py [--presets tiny nuscenes] [--frames 4] [--repeats 5]
        [--rounds 3] [--baseline 229d60c]

Records bench/results/pooling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "pooling.json"
OLD_SLOTS = 8  # the layout before issue 33: each cell's first 8 rows in a block, the rest scattered
MODALITIES = {"lidar": "pillar_cell", "camera": "frustum_cell"}


def frames(preset_name: str, count: int) -> list[dict]:
    """The network inputs (batch 1) of the first `count` val samples of the preset's world."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_data_loading import VERSION
    from bench_training_memory import preset_world

    from vexkd_core.config import preset
    from vexkd_core.data.dataset import model_source
    from vexkd_core.data.preprocess import collate, preprocess
    from vexkd_core.models.camera_encoder import LiftGeometry
    from vexkd_core.models.vexkd import network_inputs

    config = preset(preset_name)
    source = model_source(preset_world(preset_name), VERSION, "val", config, augmented=False)
    lift = LiftGeometry(config.model.camera, config.grid.bev, (config.grid.z_min_m, config.grid.z_max_m))
    return [network_inputs(collate([preprocess(source.sample(index), config)[0]]), "fusion", config.grid.bev, lift)
            for index in range(count)]


def spread(inputs: dict, name: str, cells: int, reduce: str) -> dict:
    """How one frame's rows spread over cells and over the layout's blocks."""
    import torch

    from vexkd_core.models.pooling import pool_layout

    cell = inputs[name].flatten()
    on_grid = cell[cell < cells]
    counts = torch.bincount(on_grid, minlength=cells)
    counts = counts[counts > 0].double()
    layout = pool_layout(cell, cells, reduce)
    rows = max(len(on_grid), 1)
    slots = sum(gather.numel() for gather in layout.gathers) + layout.chunk_gather.numel()
    return {"rows": len(on_grid), "cells": len(counts),
            "rows_per_cell_p50_p99_max": [float(counts.quantile(q)) for q in (0.5, 0.99)] + [float(counts.max())]
            if len(counts) else [0, 0, 0],
            "scattered_rows_before": float((counts - OLD_SLOTS).clamp(min=0).sum()) / rows,
            "scattered_rows_now": 0.0, "scattered_chunks_now": layout.chunked_rows(),
            "slots_per_row_now": slots / rows}


def timed_graph(source_tree: str, checkpoint: str, frames_file: str, repeats: int, profile: bool) -> dict:
    """Run in a child whose vexkd_core is `source_tree`'s: export the checkpoint with that
    code, feed it that code's layouts of the frames, time it (and profile it)."""
    import onnxruntime
    import torch

    from vexkd_core.onnx_export import export_onnx
    from vexkd_core.onnx_runtime import session_options
    from vexkd_core.onnx_sidecar import graph_feed, read_sidecar
    from vexkd_core.config import from_dict

    with tempfile.TemporaryDirectory() as out:
        result = export_onnx(Path(checkpoint), Path(out))
        config = from_dict(read_sidecar(result.onnx_path)["config"])
        options = session_options()
        options.intra_op_num_threads = 2
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(out) / "profile")
        session = onnxruntime.InferenceSession(str(result.onnx_path), options, providers=["CPUExecutionProvider"])
        feeds = [{name: value.numpy() for name, value in graph_feed(inputs, config).items()}
                 for inputs in torch.load(frames_file, weights_only=True)]
        session.run(None, feeds[0])  # first run: allocation and kernel choice
        seconds = []
        for _ in range(repeats):
            for feed in feeds:
                started = time.perf_counter()
                session.run(None, feed)
                seconds.append(time.perf_counter() - started)
        share = _pooling_share(session.end_profiling()) if profile else None
    return {"ms": [round(s * 1000, 2) for s in seconds], "pooling_share": share}


POOLING_OPS = {"Gather", "ReduceMax", "ReduceSum", "ScatterND", "ScatterElements"}


def _pooling_share(profile_file: str) -> float:
    """Of the graph's node time (the profile's `Node` events over all runs), what the pooling
    took: the nodes under a `pool` module, or in a graph exported before the pooling was one
    (a baseline), its gathers, reductions and scatters at the graph's top level, where
    pool() put them."""
    events = [e for e in json.loads(Path(profile_file).read_text()) if e.get("cat") == "Node"
              and e["name"].endswith("_kernel_time")]
    scoped = any("/pool/" in e["name"] for e in events)

    def pooling(event) -> bool:
        name = event["name"].removesuffix("_kernel_time")
        if scoped:
            return "/pool/" in name
        return name.count("/") == 1 and event["args"].get("op_name") in POOLING_OPS

    total = sum(e["dur"] for e in events)
    return round(sum(e["dur"] for e in events if pooling(e)) / total, 3) if total else 0.0


def in_child(source_tree: Path, *arguments) -> dict:
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                             json.dumps([str(source_tree), *map(str, arguments)])],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if result.returncode != 0:
        raise SystemExit(f"bench_pooling: a graph run under {source_tree} failed: "
                         f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worktree(revision: str, scratch: Path) -> Path:
    tree = scratch / f"baseline-{revision}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision], check=True,
                   capture_output=True)
    return tree


def measure(preset_name: str, args, scratch: Path, baseline: Path | None) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from vexkd_core.checkpoint import save_checkpoint
    from vexkd_core.config import preset
    from vexkd_core.models.vexkd import build_model

    config = preset(preset_name)
    cells = config.grid.bev.height * config.grid.bev.width
    inputs = frames(preset_name, args.frames)
    figures = {}
    for modality, name in MODALITIES.items():
        torch.manual_seed(0)
        checkpoint = save_checkpoint(scratch / f"{preset_name}-{modality}.pt", build_model(config, modality).eval(),
                                     config, modality)
        kept = [{key: value for key, value in frame.items() if key in _network_inputs(modality)} for frame in inputs]
        frames_file = scratch / f"{preset_name}-{modality}-frames.pt"
        torch.save(kept, frames_file)
        spreads = [spread(frame, name, cells, "max" if modality == "lidar" else "sum") for frame in inputs]
        runs = {"this": []} if baseline is None else {"baseline": [], "this": []}
        share = {}  # per code version, from the first round's profile (the later rounds are not profiled)
        for round_ in range(args.rounds):
            for label in runs:
                tree = REPO if label == "this" else baseline
                run = in_child(tree, checkpoint, frames_file, args.repeats, round_ == 0)
                runs[label] += run["ms"]
                if run["pooling_share"] is not None:
                    share[label] = run["pooling_share"]
        latency = {label: round(statistics.median(ms), 2) for label, ms in runs.items()}
        figures[modality] = {
            "frames": spreads, "pooling_share": share, "graph_ms": latency,
            "baseline_over_this": round(latency["baseline"] / latency["this"], 3) if baseline else None}
        _print(preset_name, modality, figures[modality])
    return figures


def _network_inputs(modality: str) -> tuple[str, ...]:
    from vexkd_core.models.vexkd import NETWORK_INPUTS

    return NETWORK_INPUTS[modality]


def _print(preset_name: str, modality: str, figures: dict) -> None:
    frames_ = figures["frames"]

    def mean(key):
        return statistics.mean(frame[key] for frame in frames_)

    print(f"{preset_name:<9} {modality:<7} rows {mean('rows'):,.0f}, cells {mean('cells'):,.0f}, rows per cell "
          f"p50/p99/max {'/'.join(f'{v:.0f}' for v in frames_[0]['rows_per_cell_p50_p99_max'])}; "
          f"rows scattered: before {mean('scattered_rows_before'):.1%}, now 0 ({mean('scattered_chunks_now'):.0f} "
          f"chunk results); slots per row {mean('slots_per_row_now'):.2f}; pooling's share of the graph "
          + ", ".join(f"{k} {v:.0%}" for k, v in figures["pooling_share"].items()) + "; graph " + ", ".join(f"{k} {v:.1f} ms" for k, v in figures["graph_ms"].items())
          + (f" (baseline/this {figures['baseline_over_this']:.2f}x)" if figures["baseline_over_this"] else ""),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=("tiny", "nuscenes"), default=["tiny", "nuscenes"])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="runs over the frames per child")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved children per code version")
    parser.add_argument("--baseline", help="a git revision whose export to compare with (a worktree of it)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source_tree, checkpoint, frames_file, repeats, profile = json.loads(args.child)
        sys.path.insert(0, source_tree)
        print(json.dumps(timed_graph(source_tree, checkpoint, frames_file, int(repeats), profile == "True")))
        return
    figures = {"baseline": args.baseline, "commit": _commit(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "presets": {}}
    with tempfile.TemporaryDirectory(prefix="vexkd-bench-pooling-") as scratch:
        scratch = Path(scratch)
        baseline = worktree(args.baseline, scratch) if args.baseline else None
        try:
            for preset_name in args.presets:
                figures["presets"][preset_name] = measure(preset_name, args, scratch, baseline)
        finally:
            if baseline is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                               capture_output=True)
    sys.path.insert(0, str(REPO))
    from vexkd_core.io import atomic_write_json

    atomic_write_json(args.results, figures)
    print(f"recorded {args.results}")


def _commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    main()
