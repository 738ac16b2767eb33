"""ONNX export and the onnxruntime backend: each model's exported graph predicts the boxes
and maps the torch model predicts, on real samples of the tiny world, through the shared
inference path; `vexkd-train eval` scores both alike; bad inputs get one clear line."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.spread_models import spread_model
from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import from_dict, load_config
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.inference import load_predictor
from vexkd_core.models.pooling import PARTS, WIDTHS, pool, pool_layout
from vexkd_core.onnx_export import OPSET, export_onnx
from vexkd_core.predictor import Predictor

pytestmark = pytest.mark.slow

# Every box above the threshold is kept (no top-k cut), so near-equal scores cannot swap a box out.
OVERRIDES = ["model.lidar.sweeps=2", "model.score_threshold=0.8", "model.max_detections=500"]
CONFIG = load_config("tiny", OVERRIDES)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def val(tiny_world):
    dataroot, world = tiny_world
    return NuScenesSource(dataroot, world.version, "val", CONFIG.model.lidar.sweeps)


@pytest.fixture(scope="module")
def models(val, tmp_path_factory):
    """{modality: (torch model, .pt, ExportResult)}, random weights with spread scores."""
    folder = tmp_path_factory.mktemp("onnx_models")
    batch = collate([preprocess(val.sample(0), CONFIG)[0]])
    exported = {}
    for modality in ("lidar", "camera", "fusion"):
        model = spread_model(CONFIG, modality, batch)
        checkpoint = save_checkpoint(folder / f"{modality}.pt", model, CONFIG, modality)
        exported[modality] = (model, checkpoint, export_onnx(checkpoint, folder / "onnx"))
    return exported


def assert_same_prediction(theirs, mine):
    """One-to-one: each box has a box of its class at the same place, size, heading, velocity
    and score (the order of near-equal scores may differ); the maps agree cell by cell."""
    assert len(mine.boxes) == len(theirs.boxes) > 0
    matched = set()
    for k in range(len(mine.boxes)):
        distance = np.linalg.norm(theirs.boxes.center - mine.boxes.center[k], axis=1)
        distance[theirs.boxes.label != mine.boxes.label[k]] = np.inf
        j = int(np.argmin(distance))
        assert distance[j] < 1e-4
        np.testing.assert_allclose(mine.boxes.score[k], theirs.boxes.score[j], atol=1e-5)
        np.testing.assert_allclose(mine.boxes.size_lwh[k], theirs.boxes.size_lwh[j], rtol=1e-4)
        np.testing.assert_allclose(np.cos(mine.boxes.yaw[k] - theirs.boxes.yaw[j]), 1.0, atol=1e-6)
        np.testing.assert_allclose(mine.boxes.velocity[k], theirs.boxes.velocity[j], atol=1e-4)
        matched.add(j)
    assert len(matched) == len(theirs.boxes)
    np.testing.assert_allclose(mine.map_probability, theirs.map_probability, atol=1e-5)


@pytest.mark.parametrize("modality", ["lidar", "camera", "fusion"])
def test_onnxruntime_predicts_what_torch_predicts(modality, models, val):
    model, _, result = models[modality]
    torch_predictor = Predictor(model, CONFIG)
    onnx_predictor = load_predictor(result.onnx_path, "onnxruntime")
    assert onnx_predictor.modality == modality and onnx_predictor.describe().endswith("CPUExecutionProvider")
    for index in range(3):  # other samples than the traced inputs, each with its own point count
        sample = val.sample(index)
        assert_same_prediction(torch_predictor(sample), onnx_predictor(sample))


def test_the_sidecar_carries_what_a_runtime_needs(models):
    _, checkpoint, result = models["lidar"]
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["opset"] == OPSET == 18 and sidecar["modality"] == "lidar"
    assert from_dict(sidecar["config"]) == CONFIG  # the config round-trips through JSON
    blocks = [entry for width in WIDTHS for entry in (
        (f"pillar_gather{width}", [f"pillar_cells{width}", width]), (f"pillar_cell{width}", [f"pillar_cells{width}"]))]
    assert [(i["name"], i["shape"]) for i in sidecar["inputs"]] == [
        ("point_features", ["points", 10]), *blocks,
        ("pillar_chunk_gather", ["pillar_chunks", WIDTHS[-1]]), ("pillar_chunk_cell", ["pillar_chunks"])]
    assert sidecar["outputs"] == ["heatmap", "regression", "map_logits"]
    assert sidecar["parameters"] == sum(p.numel() for p in models["lidar"][0].parameters())
    assert max(sidecar["check_max_difference"].values()) < 1e-4


def test_the_camera_graph_takes_no_points(models, val):
    _, _, result = models["camera"]
    sidecar = json.loads(result.sidecar_path.read_text())
    assert [i["name"] for i in sidecar["inputs"]] == ["images", *(f"frustum_{part}" for part in PARTS)]
    predictor = load_predictor(result.onnx_path, "onnxruntime")
    sample = val.sample(1)
    without_points = replace(sample, points=np.full((7, 5), np.nan, np.float32))
    assert_same_prediction(predictor(sample), predictor(without_points))


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-train"), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_eval_scores_the_exported_graphs_as_the_checkpoint(tiny_world, trained_lidar, trained_lidar_graphs, tmp_path):
    """A briefly trained LiDAR model (so that mAP is not 0 for both), exported in float and
    int8: eval with each backend; the float graph within 0.002 of the checkpoint per metric
    and class, the int8 graph within 0.02 of the float one per metric."""
    dataroot, _ = tiny_world
    float_graph, int8_graph, stdout = trained_lidar_graphs
    assert "opset 18" in stdout and "onnxruntime vs torch" in stdout
    metrics = {}
    files = {"torch": trained_lidar, "onnxruntime": float_graph, "int8": int8_graph}
    for name, path in files.items():
        result = run_tool("eval", "--backend", "torch" if name == "torch" else "onnxruntime", "--checkpoint", path,
                          "--dataroot", dataroot, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr[-2000:]
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["onnxruntime"]["backend"] == "onnxruntime with CPUExecutionProvider"
    assert metrics["int8"]["backend"] == "onnxruntime with CPUExecutionProvider, int8 graph"
    torch_metrics, onnx_metrics = metrics["torch"], metrics["onnxruntime"]
    assert torch_metrics["detection"]["mAP"] > 0.01
    for task, name in (("detection", "mAP"), ("detection", "NDS"), ("map", "mIoU")):
        assert abs(torch_metrics[task][name] - onnx_metrics[task][name]) <= 0.002, (task, name)
        assert abs(onnx_metrics[task][name] - metrics["int8"][task][name]) <= 0.02, (task, name)
    for name, ap in torch_metrics["detection"]["per_class_ap"].items():
        assert abs(ap - onnx_metrics["detection"]["per_class_ap"][name]) <= 0.002, name


def error_line(*args) -> str:
    result = run_tool(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_bad_export_and_backend_inputs_get_one_clear_line(models, tmp_path, tiny_world):
    dataroot, _ = tiny_world
    _, checkpoint, result = models["lidar"]
    assert "does not exist" in error_line("export", "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert "not a readable vexkd checkpoint" in error_line("export", "--checkpoint", tmp_path / "notes.pt",
                                                           "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    evaluate = ("eval", "--dataroot", dataroot, "--out", tmp_path / "eval", "--checkpoint")
    line = error_line(*evaluate, checkpoint, "--backend", "onnxruntime")
    assert "serves an exported .onnx graph" in line and "vexkd-train export" in line, line
    assert "serve it with backend onnxruntime" in error_line(*evaluate, result.onnx_path)
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(result.onnx_path.read_bytes())
    assert "lonely.json does not exist" in error_line(*evaluate, lonely, "--backend", "onnxruntime")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00not a graph")
    broken.with_suffix(".json").write_text(result.sidecar_path.read_text())
    assert "not a graph onnxruntime can load" in error_line(*evaluate, broken, "--backend", "onnxruntime")
    assert "invalid choice" in error_line(*evaluate, checkpoint, "--backend", "tensorflow")


def crowded_cells(cells: int, generator: torch.Generator) -> torch.Tensor:
    """Cells as real frames fill them: most with a few rows, some with hundreds, one with
    thousands (the pillars at the ego's feet), some rows off the grid (cell == cells)."""
    cell = torch.randint(20, cells + 1, (6000,), generator=generator)  # the cells below 20 as set here
    cell[:3000] = 7  # past the widest block many times over: chunks
    cell[3000:3000 + WIDTHS[-1] + 1] = 9  # one row past the widest block
    cell[3300:3300 + WIDTHS[-1]] = 11  # exactly the widest block
    cell[5000:5040] = 13  # a middle width
    return cell


@pytest.mark.parametrize("reduce", ["max", "sum"])
@pytest.mark.parametrize("case", ["crowded", "uniform", "one cell", "empty", "all off the grid"])
def test_pooling_through_a_layout_equals_the_scatter(reduce, case):
    """The graph's pooling (each cell's rows in a block of the narrowest width that holds them,
    crowded cells in chunks) gives the training path's scatter-reduce."""
    generator = torch.Generator().manual_seed(0)
    cells = 500
    cell = {"crowded": lambda: crowded_cells(cells, generator),
            "uniform": lambda: torch.randint(0, cells, (4000,), generator=generator),
            "one cell": lambda: torch.full((2000,), 42),
            "empty": lambda: torch.zeros(0, dtype=torch.long),
            "all off the grid": lambda: torch.full((30,), cells)}[case]()
    values = torch.rand(len(cell), 16, generator=generator)  # >= 0, as the ReLU rows pooled by max
    layout = pool_layout(cell, cells, reduce)
    # (a sum of 3,000 rows in another order differs by float rounding: ~2e-6 relative)
    torch.testing.assert_close(pool(values, layout, cells, reduce), pool(values, cell, cells, reduce), rtol=1e-5,
                               atol=1e-5)
    whole = torch.cat(layout.cells)
    assert len(set(whole.tolist())) == len(whole)  # written once each: no reduction, no race
    assert set(layout.chunk_cell.tolist()).isdisjoint(whole.tolist())
    if case == "crowded":  # each block the narrowest that holds its cell; only crowded cells chunked
        counts = torch.bincount(cell[cell < cells], minlength=cells)
        for width, block_cells in zip(WIDTHS, layout.cells):
            narrower = ([0] + list(WIDTHS))[WIDTHS.index(width)]
            assert all(narrower < counts[c] <= width for c in block_cells.tolist())
        assert sorted(set(layout.chunk_cell.tolist())) == [7, 9]
        assert layout.chunked_rows() == -(-int(counts[7]) // WIDTHS[-1]) + 2


def test_the_stack_serves_an_exported_graph_with_onnxruntime(models):
    from vexkd_ros.stack import node_specs

    _, checkpoint, result = models["camera"]
    specs = node_specs([models["lidar"][2].onnx_path, checkpoint], "all")
    assert [(s.modality, s.backend) for s in specs] == [("lidar", "onnxruntime"), ("camera", "torch")]
    command = " ".join(specs[0].command())
    assert f"checkpoint:={models['lidar'][2].onnx_path}" in command and "backend:=onnxruntime" in command
