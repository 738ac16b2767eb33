"""`vexkd-train export --quantize int8` (vexkd_core/onnx_quantize.py): what is quantised and
what stays float, the fidelity check against the float graph and its bounds, the sidecar
tied to its graph, and the int8 graph scored by `eval`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from vexkd_core.errors import CheckpointError
from vexkd_core.inference import load_predictor
from vexkd_core.onnx_export import export_onnx
from vexkd_core.onnx_quantize import (BOX_SCORE, FEW_BOXES, FIDELITY_BOUNDS, MATCH_M, SLACK, Calibration,
                                      QuantizationError, export_int8, fidelity, past_bounds)
from vexkd_core.predictor import Prediction
from vexkd_core.structures import Boxes3D

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-train"), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(trained_lidar_graphs):
    """The trained LiDAR student exported in float and int8 (2 calibration + 2 check frames)."""
    return trained_lidar_graphs


def weight_is_int8(graph, node) -> bool:
    """The node's weight comes through a DequantizeLinear of an int8 initializer (QDQ)."""
    producers = {output: n for n in graph.node for output in n.output}
    initializers = {i.name: i for i in graph.initializer}
    source = producers.get(node.input[1])
    return source is not None and source.op_type == "DequantizeLinear" and \
        initializers[source.input[0]].data_type == onnx.TensorProto.INT8


def test_the_convolutions_are_int8_and_the_islands_float(exported):
    _, int8_path, stdout = exported
    assert "int8 vs float32 on 2 other training frames" in stdout
    sidecar = json.loads(int8_path.with_suffix(".json").read_text())
    assert sidecar["precision"] == "int8" and "check_max_difference" not in sidecar
    quantization = sidecar["quantization"]
    assert quantization["calibration"]["split"] == "train" and len(quantization["calibration"]["samples"]) == 2
    kept = set(quantization["float_nodes"])
    assert "/linear/MatMul" in kept and any(name.startswith("/pool/") for name in kept)  # the point encoder, pooling
    logits = {"/detection/heatmap/heatmap.1/Conv", "/detection/offset/offset.1/Conv",
              "/segmentation/layers/layers.2/Conv"}
    assert logits <= kept
    graph = onnx.load(str(int8_path)).graph
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    for node in convolutions:
        assert weight_is_int8(graph, node) == (node.name not in kept), node.name
    assert sum(node.name not in kept for node in convolutions) >= 10  # decoder and heads but their logits
    fidelity_ = quantization["fidelity"]
    # compared on 2 frames, maps cell by cell (int8 moves them a little); boxes at score >= 0.3, if
    # this briefly trained model has any there (test_fidelity_counts... checks the counting)
    assert fidelity_["frames"] == 2 and 0 < fidelity_["map_largest_change"] < 0.5
    assert fidelity_["bounds"] == FIDELITY_BOUNDS
    assert all(fidelity_[name] <= bound for name, bound in FIDELITY_BOUNDS.items())


def test_the_camera_graph_keeps_its_bev_map_float_through_the_first_decoder_convolution(tiny_world, tmp_path):
    """An untrained camera student: its convolutions' zero biases are one tensor the exporter
    shares through Identity nodes, which onnxruntime's quantiser would leave in float."""
    import torch

    from vexkd_core.checkpoint import save_checkpoint
    from vexkd_core.config import preset
    from vexkd_core.data.dataset import model_source
    from vexkd_core.models.vexkd import build_model
    from vexkd_core.onnx_quantize import float_nodes, frame_feeds, quantize
    from vexkd_core.onnx_runtime import OnnxPredictor

    config = preset("tiny")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "camera.pt", build_model(config, "camera").eval(), config, "camera")
    float_graph = export_onnx(checkpoint, tmp_path).onnx_path
    graph = onnx.load(str(float_graph)).graph
    assert any(node.op_type == "Identity" for node in graph.node)
    kept = set(float_nodes(graph, "camera"))
    convolutions = {node.name for node in graph.node if node.op_type == "Conv"}
    assert kept & convolutions == {"/bev_smooth/bev_smooth.0/Conv", "/stages.0/stages.0.0/stages.0.0.0/Conv",
                                   "/detection/heatmap/heatmap.1/Conv", "/detection/offset/offset.1/Conv",
                                   "/detection/height/height.1/Conv", "/detection/size/size.1/Conv",
                                   "/detection/rotation/rotation.1/Conv", "/detection/velocity/velocity.1/Conv",
                                   "/segmentation/layers/layers.2/Conv"}
    assert any(name.startswith("/pool/") for name in kept)
    assert not any(name.startswith(("/backbone/", "/neck/", "/depth_and_context/")) for name in kept)
    dataroot, world = tiny_world
    source = model_source(dataroot, world.version, "train", config, augmented=False)
    quantize(float_graph, tmp_path / "camera.int8.onnx", "camera",
             frame_feeds(OnnxPredictor.from_file(float_graph), source, [0, 1]))
    quantized = onnx.load(str(tmp_path / "camera.int8.onnx")).graph
    for node in (node for node in quantized.node if node.op_type == "Conv"):
        assert weight_is_int8(quantized, node) == (node.name not in kept), node.name


def test_a_sidecar_beside_another_graph_is_refused(exported, tmp_path):
    float_path, int8_path, _ = exported
    swapped = tmp_path / "model.int8.onnx"
    swapped.write_bytes(float_path.read_bytes())  # the float graph under the int8 graph's sidecar
    swapped.with_suffix(".json").write_text(int8_path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError) as refused:
        load_predictor(swapped, "onnxruntime")
    assert "was written for another graph than model.int8.onnx" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert load_predictor(int8_path, "onnxruntime").precision == "int8"


def test_bad_int8_requests_get_one_clear_line(trained_lidar, tiny_world, tmp_path):
    dataroot, _ = tiny_world
    export = ("export", "--checkpoint", trained_lidar, "--out", tmp_path / "out", "--quantize", "int8")
    lines = {}
    for name, extra in {"no data": (), "other dataset": ("--dataroot", tmp_path / "elsewhere"),
                        "no frames": ("--dataroot", dataroot, "--calibration-frames", 0)}.items():
        result = run_tool(*export, *extra)
        lines[name] = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines[name]) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "give its --dataroot" in lines["no data"][0]
    assert f"trained on '{Path(dataroot).name}'" in lines["other dataset"][0]
    assert "--calibration-frames must be at least 1" in lines["no frames"][0]
    assert not (tmp_path / "out" / "model.int8.onnx").exists()


def test_an_int8_graph_past_its_bounds_is_refused_and_nothing_written(trained_lidar, tiny_world, tmp_path):
    dataroot, world = tiny_world
    float_graph = export_onnx(trained_lidar, tmp_path).onnx_path
    with pytest.raises(QuantizationError, match=r"map_cells_flipped .* > -1.0\); nothing written"):
        export_int8(float_graph, Calibration(Path(dataroot), world.version, 2), {"map_cells_flipped": -1.0})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.json", "model.onnx"]


def boxes(*rows) -> Boxes3D:
    """Boxes from (x, y, label, score) rows."""
    rows = np.array(rows, dtype=np.float64).reshape(-1, 4)
    n = len(rows)
    return Boxes3D(np.c_[rows[:, :2], np.zeros(n)], np.ones((n, 3)), np.zeros(n), np.zeros((n, 2)),
                   rows[:, 2].astype(int), rows[:, 3])


def served(*predictions):
    """A stand-in predictor: the given Predictions in turn, cut at the asked threshold as a
    predictor cuts its boxes."""
    answers = iter(predictions)

    def predict(sample, score_threshold):
        prediction = next(answers)
        keep = prediction.boxes.score >= score_threshold
        cut = Boxes3D(*(getattr(prediction.boxes, f)[keep] for f in ("center", "size_lwh", "yaw", "velocity",
                                                                       "label", "score")))
        return Prediction(cut, prediction.map_probability)
    return predict


def test_fidelity_counts_boxes_and_cells_that_change_not_scores_that_flicker():
    near = MATCH_M / 2
    reference = Prediction(boxes((0, 0, 1, 0.9), (10, 0, 2, BOX_SCORE + 0.01), (20, 0, 3, 0.8), (30, 0, 4, 0.8)),
                           np.array([[0.9, 0.52, 0.2, 0.7]]))
    candidate = Prediction(boxes((near, 0, 1, 0.7),  # moved within MATCH_M: the same box
                                 (10, 0, 2, BOX_SCORE - SLACK / 2),  # fell just below the threshold: flicker
                                 (20, 0, 5, 0.8),  # other class: the reference's missed, this one spurious
                                 (30 + 2 * MATCH_M, 0, 4, 0.8)),  # too far: missed and spurious
                           np.array([[0.8, 0.48, 0.6, 0.7]]))  # 0.52 -> 0.48 within SLACK; 0.2 -> 0.6 flips
    measured = fidelity(served(reference), served(candidate), [None])
    assert measured["boxes_float"] == 4
    assert measured["boxes_missed"] == 2 / 4 and measured["boxes_spurious"] == 2 / 4
    assert measured["map_cells_flipped"] == 1 / 4 and measured["map_largest_change"] == pytest.approx(0.4)


def test_a_few_boxes_pass_whatever_the_count_and_no_more():
    """One box of 47 is 2.1 %: a check on few boxes cannot resolve the 2 % bound."""
    few = {"boxes_float": 47, "boxes_missed": FEW_BOXES / 47, "boxes_spurious": 0.0, "map_cells_flipped": 0.0}
    assert past_bounds(few, FIDELITY_BOUNDS) == []
    more = {**few, "boxes_missed": (FEW_BOXES + 1) / 47, "map_cells_flipped": 0.02}
    assert past_bounds(more, FIDELITY_BOUNDS) == ["boxes_missed", "map_cells_flipped"]
    many = {"boxes_float": 933, "boxes_missed": 0.0, "boxes_spurious": 19 / 933, "map_cells_flipped": 0.0}
    assert past_bounds(many, FIDELITY_BOUNDS) == ["boxes_spurious"]  # 2.04 %, 19 boxes
