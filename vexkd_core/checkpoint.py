"""One checkpoint file holds everything a model needs: weights, the full config, the
modality, class names, grids and versions. Written atomically; read with
torch.load(weights_only=True), so a checkpoint can never execute code."""
from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
from pathlib import Path

import torch

from vexkd_core.classes import DETECTION_CLASSES, MAP_CLASSES
from vexkd_core.config import Config, from_dict
from vexkd_core.io import atomic_write_bytes

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit what was asked of it."""


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: Config, modality: str,
                    **extra) -> Path:
    payload = {
        "format_version": FORMAT_VERSION, "modality": modality, "config": config.to_dict(),
        "detection_classes": list(DETECTION_CLASSES), "map_classes": list(MAP_CLASSES),
        "torch_version": str(torch.__version__), "model": model.state_dict(), **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_payload(path: str | Path, what: str = "checkpoint") -> dict:
    """A torch file's contents as plain data (weights_only: no code runs), or a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable vexkd {what} ({type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a vexkd {what}")
    return payload


def load_checkpoint(path: str | Path) -> dict:
    payload = read_payload(path)
    if payload.get("format_version") != FORMAT_VERSION or "model" not in payload:
        raise CheckpointError(f"{path} is not a vexkd checkpoint (format {FORMAT_VERSION})")
    return payload


def state_dict_mismatch(error: RuntimeError) -> str:
    """The first mismatch load_state_dict names (its message starts with a header line)."""
    lines = str(error).splitlines()
    return lines[1].strip() if len(lines) > 1 else str(error)


def model_from_checkpoint(path: str | Path, expected_modality: str | None = None):
    """(model in eval mode, config, payload); the model is rebuilt from the stored config."""
    from vexkd_core.models.vexkd import build_model

    payload = load_checkpoint(path)
    modality = payload["modality"]
    if expected_modality is not None and modality != expected_modality:
        raise CheckpointError(f"{path} holds a {modality} model, not {expected_modality}")
    config = from_dict(payload["config"])
    # The checkpoint holds the trained backbone: the ImageNet file it started from is not
    # needed (nor present, on the robot that runs the model).
    camera = dataclasses.replace(config.model.camera, pretrained_backbone="")
    model = build_model(dataclasses.replace(config, model=dataclasses.replace(config.model, camera=camera)), modality)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match its own config: {state_dict_mismatch(error)}") from None
    return model.eval(), config, payload
