"""A trained model as an ONNX graph an inference engine can run (ONNX Runtime, TensorRT).

The graph is the model's `network`: everything with weights, from the points' pillar
inputs and the cameras' frustum cells to the heads' raw maps. What has no weights stays
outside it and is the same code the torch path runs (vexkd.network_inputs before the graph,
detection_head.decode_boxes and a sigmoid after it), so a runtime needs the graph and the
sidecar JSON written next to it: config (grids, classes, thresholds), modality, the
input and output layout, and the training data its checkpoint recorded.

The graph pools points into pillars and frustum points into BEV cells through a
PoolLayout (pooling.py says why), so each cell input becomes its parts: `<x>_gather<w>` and
`<x>_cell<w>` for each block width w, `<x>_chunk_gather` and `<x>_chunk_cell`;
onnx_sidecar.graph_feed computes them. Opset 18: ScatterElements with reduction max/add for
the chunks of cells past the widest block. Those are ScatterElements, not ScatterND: ONNX
Runtime's CPU ScatterND with reduction adds duplicate indices from several threads at once
and loses some of them.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.config import Config
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.io import atomic_write_bytes, atomic_write_json
from vexkd_core.modalities import reads
from vexkd_core.models.lidar_encoder import POINT_INPUTS
from vexkd_core.models.pooling import PARTS, PoolLayout
from vexkd_core.models.vexkd import NETWORK_INPUTS, NETWORK_OUTPUTS, network_outputs
from vexkd_core.onnx_runtime import session_options
from vexkd_core.onnx_sidecar import (POOLED, SIDECAR_FORMAT, SIDECAR_VERSION, graph_feed, graph_input_names,
                                     layout_names, sidecar_path)
from vexkd_core.training_data import FIELD as TRAINING_DATA
from vexkd_core.training_data import recorded_training_data

OPSET = 18
CHECK_TOLERANCE = 1e-3  # largest |onnxruntime - torch| on the export check, relative to the output's scale
OUTSIDE_THE_GRAPH = ("before: vexkd_core.models.vexkd.network_inputs (pillar_inputs: each point's pillar cell "
                     "and PFN inputs; LiftGeometry.cells: each frustum point's BEV cell, from calibration), then "
                     "vexkd_core.onnx_sidecar.graph_feed (pooling.pool_layout of each); "
                     "after: vexkd_core.models.detection_head.decode_boxes, sigmoid of map_logits")
# Dynamic dimensions: the first of each graph input whose size changes from frame to frame.
DYNAMIC = {"point_features": "points",
           **{part: f"{name.removesuffix('_cell')}_{counts}" for name in POOLED
              for part, counts in zip(layout_names(name), PARTS.values())}}


class ExportError(ValueError):
    """A model that cannot be exported, or whose graph does not compute what the model does."""


class NetworkGraph(nn.Module):
    """The model's network on batch 1 with the graph's positional tensor inputs and outputs,
    as the exporter traces it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.input_names = graph_input_names(model.modality)

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given, inputs = dict(zip(self.input_names, flat)), {}
        for name in NETWORK_INPUTS[self.model.modality]:
            inputs[name] = PoolLayout.from_parts(dict(zip(PARTS, (given[part] for part in layout_names(name))))) \
                if name in POOLED else given[name]
        outputs = network_outputs(self.model.network(inputs, 1))
        return tuple(outputs[name] for name in NETWORK_OUTPUTS if name in outputs)


def example_inputs(config: Config, modality: str, points: int, seed: int) -> dict[str, torch.Tensor]:
    """Random network inputs (graph_feed gives the graph's); a sixth of the rows crowd into 40
    cells, so that the layouts have rows past their slots."""
    generator = torch.Generator().manual_seed(seed)
    grid, camera = config.grid.bev, config.model.camera
    cells = grid.height * grid.width

    def random_cells(shape, high):
        crowded = torch.rand(shape, generator=generator) < 1 / 6
        return torch.where(crowded, torch.randint(0, 40, shape, generator=generator),
                           torch.randint(0, high, shape, generator=generator))

    inputs = {}
    if reads(modality, "lidar"):
        inputs["point_features"] = torch.randn(points, POINT_INPUTS, generator=generator)
        inputs["pillar_cell"] = random_cells((points,), cells)
    if reads(modality, "camera"):
        shape = (1, len(CAMERA_CHANNELS), camera.depth_bins, camera.input_height // camera.feature_stride,
                 camera.input_width // camera.feature_stride)
        inputs["images"] = torch.randn(1, len(CAMERA_CHANNELS), 3, camera.input_height, camera.input_width,
                                       generator=generator)
        inputs["frustum_cell"] = random_cells(shape, cells + 1)  # cells: off the grid
    return inputs


def _index_add_as_scatter_elements(g, data, dim, index, source, alpha=None):
    """aten::index_add along dim 0 -> ScatterElements(reduction=add) with the index broadcast
    over the source's other dimensions (see the module docstring for why not ScatterND)."""
    column = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([1])))
    return g.op("ScatterElements", data, g.op("Expand", column, g.op("Shape", source)), source, axis_i=0,
                reduction_s="add")


def _scatter_max_as_scatter_elements(g, data, dim, index, source, reduce, include_self=True):
    """aten::scatter_reduce(amax, include_self) -> one ScatterElements(reduction=max). torch's
    own symbolic wraps it in an If on an empty index that copies the whole map (10 ms here)."""
    from torch.onnx.symbolic_helper import _maybe_get_const

    if _maybe_get_const(reduce, "s") != "amax" or not _maybe_get_const(include_self, "b"):
        raise ExportError("only scatter_reduce(amax, include_self=True) is exported")
    return g.op("ScatterElements", data, index, source, axis_i=_maybe_get_const(dim, "i"), reduction_s="max")


@dataclass
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    max_difference: dict[str, float]  # per output: largest |onnxruntime - torch| on the check inputs


def export_onnx(checkpoint: Path, out_dir: Path) -> ExportResult:
    """<out_dir>/<checkpoint stem>.onnx and .json, checked against the torch model with
    onnxruntime on inputs other than the traced ones (another point count)."""
    model, config, payload = model_from_checkpoint(checkpoint)
    modality = payload["modality"]
    training_data = _training_data(payload, checkpoint)
    graph = NetworkGraph(model).eval()
    network = example_inputs(config, modality, points=2000, seed=0)
    traced = graph_feed(network, config)
    output_names = [name for name in NETWORK_OUTPUTS if name in network_outputs(model.network(network, 1))]
    torch.onnx.register_custom_op_symbolic("aten::index_add", _index_add_as_scatter_elements, OPSET)
    torch.onnx.register_custom_op_symbolic("aten::scatter_reduce", _scatter_max_as_scatter_elements, OPSET)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            torch.onnx.export(graph, tuple(traced.values()), buffer, input_names=list(traced),
                              output_names=output_names, opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {0: DYNAMIC[name]} for name in traced if name in DYNAMIC})
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"the {modality} model of {checkpoint} does not export to ONNX: {first}") from None
    check = example_inputs(config, modality, points=3517, seed=1)
    with torch.no_grad():  # the model's own network: its scatters, not the graph's layouts
        expected = network_outputs(model.network(check, 1))
    difference = _check(buffer.getvalue(), graph_feed(check, config), expected, output_names)
    onnx_path = atomic_write_bytes(out_dir / f"{checkpoint.stem}.onnx", buffer.getvalue())
    sidecar = {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "modality": modality, "opset": OPSET,
        "precision": "float32", "graph_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "config": config.to_dict(), "detection_classes": list(DETECTION_CLASSES), "map_classes": list(MAP_CLASSES),
        "inputs": [{"name": name, "dtype": str(value.dtype).removeprefix("torch."),
                    "shape": [DYNAMIC[name], *value.shape[1:]] if name in DYNAMIC else list(value.shape)}
                   for name, value in traced.items()],
        "outputs": output_names, "outside_the_graph": OUTSIDE_THE_GRAPH,
        "parameters": sum(p.numel() for p in model.parameters()),
        "source_checkpoint": str(checkpoint), "source_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "torch_version": str(torch.__version__), "check_max_difference": difference,
        **training_data,
    }
    return ExportResult(onnx_path, atomic_write_json(sidecar_path(onnx_path), sidecar), difference)


def _training_data(payload: dict, checkpoint: Path) -> dict:
    """The sidecar's copy of what the checkpoint says the model was trained on (nothing where an
    older vexkd recorded nothing); a record that does not read is refused, not passed on."""
    try:
        recorded = recorded_training_data(payload)
    except ValueError as error:
        raise ExportError(f"{checkpoint}: its {TRAINING_DATA} record does not read ({error})") from None
    return {TRAINING_DATA: recorded.to_dict()} if recorded is not None else {}


def _check(onnx_model: bytes, feed: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
           output_names: list[str]) -> dict[str, float]:
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model, session_options(), providers=["CPUExecutionProvider"])
    produced = session.run(output_names, {name: value.numpy() for name, value in feed.items()})
    difference = {}
    for name, got in zip(output_names, produced):
        want = expected[name].numpy()
        difference[name] = float(np.abs(got - want).max())
        if difference[name] > CHECK_TOLERANCE * max(1.0, float(np.abs(want).max())):
            raise ExportError(f"the exported graph's {name} differs from the model's by {difference[name]:.3g} "
                              f"(tolerance {CHECK_TOLERANCE} x its scale); nothing written")
    return difference
