"""The `onnxruntime` backend: an exported graph (onnx_export.py, its sidecar read through
onnx_sidecar.py) behind the Predictor interface, so `vexkd-train eval` and the nodes serve
it like a checkpoint.

Execution providers: on `device` cuda, TensorRT and CUDA where this onnxruntime build
has them (onnxruntime-gpu), CPU otherwise; on cpu, CPU only.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from vexkd_core.config import from_dict
from vexkd_core.data.preprocess import Batch
from vexkd_core.errors import CheckpointError
from vexkd_core.modalities import reads
from vexkd_core.models.camera_encoder import LiftGeometry
from vexkd_core.models.vexkd import network_inputs
from vexkd_core.onnx_sidecar import check_sidecar_is_of, graph_feed, graph_input_names, read_sidecar, sidecar_path
from vexkd_core.predictor import PreparedInput, Predictor
from vexkd_core.timing import StageTimer
from vexkd_core.training_data import training_data_line

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}  # torch dtype names -> onnxruntime's tensor(...) names


def execution_providers(device: str) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    gpu = [name for name in GPU_PROVIDERS if name in available] if device == "cuda" else []
    return gpu + ["CPUExecutionProvider"]


def session_options():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its shape-inference notes on the scatter are not for users
    # Idle threads sleep instead of spinning: they would take the cores from the preprocessing,
    # decoding and publishing around each run (postprocess took twice as long).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def check_graph_matches(session, sidecar: dict, path: Path) -> None:
    """The graph takes the inputs the sidecar lists (names and element types) and produces
    its outputs: checked at load, so a mismatch is refused before the first frame."""
    graph_inputs = {node.name: node.type for node in session.get_inputs()}
    listed = {entry["name"]: f"tensor({ONNX_TYPE_NAMES.get(entry['dtype'], entry['dtype'])})"
              for entry in sidecar["inputs"]}
    expected = set(graph_input_names(sidecar["modality"]))
    if set(listed) != expected:
        raise CheckpointError(f"{sidecar_path(path)}: its inputs ({', '.join(sorted(listed))}) are not those of a "
                              f"{sidecar['modality']} graph ({', '.join(sorted(expected))})")
    if listed != graph_inputs:
        differ = sorted(set(listed.items()) ^ set(graph_inputs.items()))
        raise CheckpointError(f"{sidecar_path(path)} does not describe {path.name}: inputs differ at "
                              f"{', '.join(f'{name} {kind}' for name, kind in differ[:4])}")
    missing = set(sidecar["outputs"]) - {node.name for node in session.get_outputs()}
    if missing:
        raise CheckpointError(f"{sidecar_path(path)} names outputs {', '.join(sorted(missing))} that "
                              f"{path.name} does not have")


class OnnxPredictor(Predictor):
    """The exported network in an onnxruntime session; everything around it as Predictor's."""

    def __init__(self, session, sidecar: dict):
        self.session, self.config, self.device = session, from_dict(sidecar["config"]), "cpu"
        self.modality, self.parameters = sidecar["modality"], sidecar["parameters"]
        self.precision = sidecar["precision"]
        self.trained_on = training_data_line(sidecar)
        self.input_names = [entry["name"] for entry in sidecar["inputs"]]
        self.output_names = sidecar["outputs"]
        self.lift = LiftGeometry(self.config.model.camera, self.config.grid.bev, (
            self.config.grid.z_min_m, self.config.grid.z_max_m)) if reads(self.modality, "camera") else None

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", expected_modality: str | None = None) -> OnnxPredictor:
        import onnxruntime

        path = Path(path)
        if path.suffix != ".onnx":
            raise CheckpointError(f"backend onnxruntime serves an exported .onnx graph, not {path} "
                                  f"(export one with `vexkd-train export --checkpoint {path} --out DIR`)")
        if not path.is_file():
            raise CheckpointError(f"ONNX graph {path} does not exist")
        sidecar = read_sidecar(path)
        if expected_modality is not None and sidecar["modality"] != expected_modality:
            raise CheckpointError(f"{path} holds a {sidecar['modality']} model, not {expected_modality}")
        try:
            session = onnxruntime.InferenceSession(str(path), session_options(),
                                                   providers=execution_providers(device))
        except (onnxruntime.capi.onnxruntime_pybind11_state.Fail,
                onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph) as error:
            raise CheckpointError(f"{path} is not a graph onnxruntime can load "
                                  f"({str(error).splitlines()[0][:160]})") from None
        check_sidecar_is_of(sidecar, path)
        check_graph_matches(session, sidecar, path)
        return cls(session, sidecar)

    def describe(self) -> str:
        served = "onnxruntime with " + ", ".join(self.session.get_providers())
        return served if self.precision == "float32" else f"{served}, {self.precision} graph"

    def feed(self, batch: Batch, timer: StageTimer | None = None) -> dict:
        """The graph's inputs (numpy, by name) for a batch: what infer() runs the graph on, and
        what int8 calibration (onnx_quantize.py) feeds it."""
        timer = timer if timer is not None else StageTimer()
        inputs = timer.measure("inputs", network_inputs, batch, self.modality, self.config.grid.bev, self.lift)
        feed = timer.measure("layout", graph_feed, inputs, self.config)
        return {name: feed[name].numpy() for name in self.input_names}

    @torch.no_grad()
    def prepare(self, sample, timer: StageTimer) -> PreparedInput:
        prepared = super().prepare(sample, timer)
        started = time.perf_counter()
        feed = self.feed(prepared.batch, timer)
        return replace(prepared, graph_feed=feed, infer_s=time.perf_counter() - started)

    def infer(self, prepared: PreparedInput, timer: StageTimer) -> dict[str, torch.Tensor]:
        outputs = timer.measure("network", self.session.run, self.output_names, prepared.graph_feed)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}
