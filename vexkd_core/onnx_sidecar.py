"""What an exported ONNX graph and the runtime that serves it agree on: the sidecar JSON
written next to the graph (its format, where it lies, how it is read and checked) and the
graph's inputs (the network inputs with each cell tensor as its PoolLayout's parts).
onnx_export.py writes both; onnx_runtime.py reads them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vexkd_core.checkpoint import check_model_description
from vexkd_core.config import Config
from vexkd_core.errors import CheckpointError
from vexkd_core.models.pooling import PARTS, pool_layout
from vexkd_core.models.vexkd import NETWORK_INPUTS

SIDECAR_FORMAT = "vexkd-onnx"
SIDECAR_VERSION = 2  # 2: the layout's blocks of several widths, the graph's SHA-256, its precision
PRECISIONS = ("float32", "int8")  # of the graph's weights and activations (int8: onnx_quantize.py)
# The network inputs that are cells, and how their rows are pooled.
POOLED = {"pillar_cell": "max", "frustum_cell": "sum"}


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def layout_names(name: str) -> list[str]:
    stem = name.removesuffix("_cell")
    return [f"{stem}_{part}" for part in PARTS]


def graph_input_names(modality: str) -> list[str]:
    return [part for name in NETWORK_INPUTS[modality] for part in (layout_names(name) if name in POOLED else [name])]


def graph_feed(inputs: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """network_inputs (batch 1) -> the graph's inputs: each cell tensor as its PoolLayout's parts."""
    cells = config.grid.bev.height * config.grid.bev.width
    feed = {}
    for name, value in inputs.items():
        if name in POOLED:
            parts = pool_layout(value.flatten(), cells, POOLED[name]).parts()
            feed.update(zip(layout_names(name), (parts[part] for part in PARTS)))
        else:
            feed[name] = value
    return feed


def check_sidecar_is_of(sidecar: dict, onnx_path: Path) -> None:
    """The sidecar was written for this graph (its graph_sha256): a sidecar left beside
    another graph (a re-export, an int8 graph copied over a float one) is refused."""
    if hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest() != sidecar["graph_sha256"]:
        raise CheckpointError(f"{sidecar_path(onnx_path)} was written for another graph than {Path(onnx_path).name} "
                              f"(its graph_sha256 differs): export the checkpoint again")


def read_sidecar(onnx_path: Path) -> dict:
    """The sidecar of an exported graph, checked field by field (one-line CheckpointError)."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: an ONNX graph is served with the .json "
                              f"`vexkd-train export` wrote next to it")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not JSON: not a vexkd ONNX sidecar") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{path} is not a vexkd ONNX sidecar (format {SIDECAR_FORMAT} {SIDECAR_VERSION})")
    if sidecar.get("format_version") != SIDECAR_VERSION:
        raise CheckpointError(f"{path} is a {SIDECAR_FORMAT} sidecar of format version "
                              f"{sidecar.get('format_version')!r}; this vexkd reads version {SIDECAR_VERSION}: "
                              f"export the checkpoint again with `vexkd-train export`")
    check_model_description(sidecar, path, "sidecar")
    inputs, outputs = sidecar.get("inputs"), sidecar.get("outputs")
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("dtype"), str)
            for entry in inputs):
        raise CheckpointError(f"{path}: its 'inputs' are not a list of {{name, dtype, shape}} entries")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(name, str) for name in outputs):
        raise CheckpointError(f"{path}: its 'outputs' are not a list of output names")
    if not isinstance(sidecar.get("graph_sha256"), str) or len(sidecar["graph_sha256"]) != 64:
        raise CheckpointError(f"{path}: its 'graph_sha256' is not the SHA-256 of a graph")
    if sidecar.get("precision") not in PRECISIONS:
        raise CheckpointError(f"{path}: its 'precision' is {sidecar.get('precision')!r}, not one of "
                              f"{', '.join(PRECISIONS)}")
    if not isinstance(sidecar.get("parameters"), int):
        raise CheckpointError(f"{path}: its 'parameters' is not a count")
    return sidecar
