"""The `onnxruntime` backend: an exported graph (onnx_export.py) behind the Predictor
interface, so `vexkd-train eval` and the nodes serve it like a checkpoint.

Execution providers: on `device` cuda, TensorRT and CUDA where this onnxruntime build
has them (onnxruntime-gpu), CPU otherwise; on cpu, CPU only.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vexkd_core.checkpoint import CheckpointError
from vexkd_core.config import from_dict
from vexkd_core.data.preprocess import Batch
from vexkd_core.inference import Predictor
from vexkd_core.models.camera_encoder import LiftGeometry
from vexkd_core.models.vexkd import network_inputs
from vexkd_core.onnx_export import SIDECAR_FORMAT, SIDECAR_VERSION, graph_feed, sidecar_path
from vexkd_core.timing import StageTimer

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


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


def read_sidecar(onnx_path: Path) -> dict:
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: an ONNX graph is served with the .json "
                              f"`vexkd-train export` wrote next to it")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not JSON: not a vexkd ONNX sidecar") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT or \
            sidecar.get("format_version") != SIDECAR_VERSION:
        raise CheckpointError(f"{path} is not a vexkd ONNX sidecar (format {SIDECAR_FORMAT} {SIDECAR_VERSION})")
    return sidecar


class OnnxPredictor(Predictor):
    """The exported network in an onnxruntime session; everything around it as Predictor's."""

    def __init__(self, session, sidecar: dict):
        self.session, self.config, self.device = session, from_dict(sidecar["config"]), "cpu"
        self.modality, self.parameters = sidecar["modality"], sidecar["parameters"]
        self.input_names = [entry["name"] for entry in sidecar["inputs"]]
        self.output_names = sidecar["outputs"]
        self.lift = None if self.modality == "lidar" else LiftGeometry(
            self.config.model.camera, self.config.grid.bev, (self.config.grid.z_min_m, self.config.grid.z_max_m))

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
        return cls(session, sidecar)

    def describe(self) -> str:
        return "onnxruntime with " + ", ".join(self.session.get_providers())

    def infer(self, batch: Batch, timer: StageTimer) -> dict[str, torch.Tensor]:
        inputs = timer.measure("inputs", network_inputs, batch, self.modality, self.config.grid.bev, self.lift)
        feed = timer.measure("layout", graph_feed, inputs, self.config)
        feed = {name: feed[name].numpy() for name in self.input_names}
        outputs = timer.measure("network", self.session.run, self.output_names, feed)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}
