"""One loader contract for every entry point: a file that is not a valid vexkd checkpoint, or a
graph + sidecar of this format, is refused when it is loaded, in one line naming the file and
the problem; the node, `vexkd-train eval`, `export` and the stack exit 2 with that line, never
with a traceback and never failing later on each frame."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.errors import CheckpointError
from vexkd_core.inference import load_predictor, model_file_modality
from vexkd_core.models.vexkd import build_model
from vexkd_core.onnx_export import export_onnx
from vexkd_ros.stack import NodeSpec

pytestmark = pytest.mark.unit

CONFIG = load_config("tiny", ["model.lidar.sweeps=1"])
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A random-weight LiDAR checkpoint and its exported graph."""
    folder = tmp_path_factory.mktemp("model_files")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "lidar.pt", build_model(CONFIG, "lidar"), CONFIG, "lidar")
    return checkpoint, export_onnx(checkpoint, folder / "onnx")


def edited_checkpoint(good, folder: Path, name: str, edit) -> Path:
    payload = torch.load(good[0], weights_only=True)
    edit(payload)
    torch.save(payload, folder / name)
    return folder / name


def edited_graph(good, folder: Path, name: str, edit) -> Path:
    """A copy of the exported graph whose sidecar `edit` changed."""
    exported = good[1]
    graph = folder / f"{name}.onnx"
    graph.write_bytes(exported.onnx_path.read_bytes())
    sidecar = json.loads(exported.sidecar_path.read_text())
    edit(sidecar)
    graph.with_suffix(".json").write_text(json.dumps(sidecar))
    return graph


def set_in(mapping: dict, key: str, value):
    mapping[key] = value


CHECKPOINT_CASES = {  # file name: (edit of the payload, what the refusal says)
    "future_field": (lambda p: p["config"].update(future_field=1), "unknown config field 'future_field'"),
    "no_modality": (lambda p: p.pop("modality"), "its 'modality' is None"),
    "config_list": (lambda p: set_in(p, "config", [1, 2]), "its 'config' is list"),
    "config_mistyped": (lambda p: p["config"]["train"].update(batch_size="four"), "train.batch_size: expected a int"),
    "newer_format": (lambda p: set_in(p, "format_version", 7), "format 7, written by a newer vexkd"),
    "weights_list": (lambda p: set_in(p, "model", [torch.zeros(1)]), "its 'model' is not a dict of named tensors"),
    "other_classes": (lambda p: set_in(p, "detection_classes", ["car"]), "its detection_classes differ"),
}

SIDECAR_CASES = {  # file name: (edit of the sidecar, what the refusal says)
    "outputs_not_in_graph": (lambda s: set_in(s, "outputs", ["heatmap", "logits_v2"]),
                             "names outputs logits_v2 that outputs_not_in_graph.onnx does not have"),
    "renamed_input": (lambda s: s["inputs"][0].update(name="points"), "its inputs (pillar_cell"),
    "wrong_dtype": (lambda s: s["inputs"][0].update(dtype="float64"), "does not describe wrong_dtype.onnx"),
    "camera_claimed": (lambda s: set_in(s, "modality", "camera"), "are not those of a camera graph"),
    "no_inputs": (lambda s: s.pop("inputs"), "its 'inputs' are not a list"),
    "outputs_text": (lambda s: set_in(s, "outputs", "heatmap"), "its 'outputs' are not a list of output names"),
    "config_future": (lambda s: s["config"].update(future_field=1), "unknown config field 'future_field'"),
    "newer_sidecar": (lambda s: set_in(s, "format_version", 3), "this vexkd reads version 2"),
    "older_sidecar": (lambda s: set_in(s, "format_version", 1), "export the checkpoint again"),
    "no_graph_hash": (lambda s: s.pop("graph_sha256"), "its 'graph_sha256' is not the SHA-256 of a graph"),
    "other_graph_hash": (lambda s: set_in(s, "graph_sha256", "0" * 64), "was written for another graph than"),
    "int4": (lambda s: set_in(s, "precision", "int4"), "its 'precision' is 'int4', not one of float32, int8"),
}


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_a_malformed_checkpoint_is_refused_in_one_line_naming_it(name, good, tmp_path):
    edit, message = CHECKPOINT_CASES[name]
    path = edited_checkpoint(good, tmp_path, f"{name}.pt", edit)
    for load in (lambda: load_predictor(path), lambda: model_file_modality(path)):
        with pytest.raises(CheckpointError) as refused:
            load()
        text = str(refused.value)
        assert message in text and f"{name}.pt" in text and "\n" not in text, text


@pytest.mark.parametrize("name", SIDECAR_CASES)
def test_a_sidecar_that_does_not_describe_its_graph_is_refused_at_load(name, good, tmp_path):
    edit, message = SIDECAR_CASES[name]
    graph = edited_graph(good, tmp_path, name, edit)
    with pytest.raises(CheckpointError) as refused:
        load_predictor(graph, "onnxruntime")
    text = str(refused.value)
    assert message in text and name in text and "\n" not in text, text


def test_the_untouched_files_load(good):
    checkpoint, exported = good
    assert load_predictor(checkpoint).config == CONFIG
    assert load_predictor(exported.onnx_path, "onnxruntime").config == CONFIG


def one_error_line(result: subprocess.CompletedProcess | subprocess.Popen, stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in stderr, (result.returncode, stderr)
    return lines[0]


@pytest.mark.ros  # starts detector node processes (rclpy) beside the CLIs
def test_every_entry_point_refuses_them_in_one_line_and_exit_2(good, tmp_path, tiny_world):
    """The node (torch and onnxruntime), eval, export and the stack, before any frame."""
    dataroot, _ = tiny_world
    future = edited_checkpoint(good, tmp_path, "future.pt", CHECKPOINT_CASES["future_field"][0])
    nameless = edited_checkpoint(good, tmp_path, "nameless.pt", CHECKPOINT_CASES["no_modality"][0])
    outputs = edited_graph(good, tmp_path, "outputs", SIDECAR_CASES["outputs_not_in_graph"][0])
    runs = {  # command: what its line must name
        tuple(NodeSpec("lidar", future).command()): "future_field",
        tuple(NodeSpec("lidar", nameless).command()): "'modality'",
        tuple(NodeSpec("lidar", outputs, "onnxruntime").command()): "logits_v2",
        (str(BIN / "vexkd-train"), "eval", "--checkpoint", str(future), "--dataroot", str(dataroot),
         "--out", str(tmp_path / "eval")): "future_field",
        (str(BIN / "vexkd-train"), "eval", "--checkpoint", str(outputs), "--backend", "onnxruntime",
         "--dataroot", str(dataroot), "--out", str(tmp_path / "eval_onnx")): "logits_v2",
        (str(BIN / "vexkd-train"), "export", "--checkpoint", str(nameless), "--out", str(tmp_path / "export")):
            "'modality'",
        (str(BIN / "vexkd-ros"), "stack", "--bag", str(tmp_path / "no_bag_needed"), "--checkpoint", str(nameless)):
            "'modality'",
    }
    processes = {command: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in runs}
    for command, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        line = one_error_line(process, stderr)
        assert runs[command] in line, (command, line)
    assert not (tmp_path / "export").exists() and not (tmp_path / "eval").exists()
