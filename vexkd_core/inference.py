"""Which predictor serves a model file: `load_predictor` gives the torch `Predictor`
(predictor.py) of a checkpoint or the `OnnxPredictor` (onnx_runtime.py) of an exported
graph; `model_file_*` read either file's description without building the model.
"""
from __future__ import annotations

from pathlib import Path

from vexkd_core.checkpoint import load_checkpoint, model_from_checkpoint
from vexkd_core.errors import CheckpointError
from vexkd_core.onnx_runtime import OnnxPredictor
from vexkd_core.onnx_sidecar import read_sidecar
from vexkd_core.predictor import Predictor
from vexkd_core.training_data import training_data_line

BACKENDS = ("torch", "onnxruntime")


def load_predictor(path: str | Path, backend: str = "torch", device: str = "cpu",
                   expected_modality: str | None = None) -> Predictor:
    """The predictor of a model file: a checkpoint (.pt) for `torch`, an exported graph (.onnx
    with its .json beside it) for `onnxruntime`. Errors are CheckpointError, one line."""
    if backend == "torch":
        if Path(path).suffix == ".onnx":
            raise CheckpointError(f"{path} is an ONNX graph: serve it with backend onnxruntime, or give the .pt")
        model, config, payload = model_from_checkpoint(path, expected_modality)
        return Predictor(model, config, device, training_data_line(payload))
    if backend == "onnxruntime":
        return OnnxPredictor.from_file(path, device, expected_modality)
    raise CheckpointError(f"backend must be one of {', '.join(BACKENDS)}, not '{backend}'")


def model_file_backend(path: str | Path) -> str:
    """The backend that serves a model file: onnxruntime for an exported .onnx, else torch."""
    return "onnxruntime" if Path(path).suffix == ".onnx" else "torch"


def model_file_description(path: str | Path) -> dict:
    """A checkpoint's payload or an exported graph's sidecar, checked, without building the model."""
    if model_file_backend(path) == "onnxruntime":
        return read_sidecar(Path(path))
    return load_checkpoint(path)


def model_file_modality(path: str | Path) -> str:
    """lidar, camera or fusion, from a checkpoint or an exported graph's sidecar, without building the model."""
    return model_file_description(path)["modality"]
