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
from vexkd_core.errors import CheckpointError
from vexkd_core.io import atomic_write_bytes
from vexkd_core.modalities import MODALITIES
from vexkd_core.models.vexkd import build_model
from vexkd_core.training_data import FIELD as TRAINING_DATA
from vexkd_core.training_data import TrainingData

FORMAT_VERSION = 2
# Format 1 held the weights of the two model classes before BEVModel (Teacher, Student):
# its state-dict key prefixes -> format 2's, the first that matches ("{modality}": the
# checkpoint's, for a student's single encoder). Renames only: the tensors are the same.
FORMAT_1_RENAMES = (
    ("lidar_encoder.", "encoders.lidar."), ("camera_encoder.", "encoders.camera."),
    ("encoder.", "encoders.{modality}."), ("fusion.", "fuser."), ("heads.decoder.", "decoder."),
    ("heads.detection_head.", "heads.detection."), ("heads.map_head.", "heads.segmentation."),
)


def format_1_weights(weights: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    """A format-1 checkpoint's weights under format 2's names (FORMAT_1_RENAMES), in their order."""
    def renamed(key: str) -> str:
        for old, new in FORMAT_1_RENAMES:
            if key.startswith(old):
                return new.format(modality=modality) + key[len(old):]
        return key
    return {renamed(key): value for key, value in weights.items()}


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: Config, modality: str,
                    training_data: TrainingData | None = None, **extra) -> Path:
    """`training_data`: the dataset the trainer trained on (training_data.training_data_line
    describes it; a checkpoint without one says so)."""
    payload = {
        "format_version": FORMAT_VERSION, "modality": modality, "config": config.to_dict(),
        "detection_classes": list(DETECTION_CLASSES), "map_classes": list(MAP_CLASSES),
        "torch_version": str(torch.__version__), "model": model.state_dict(),
        **({TRAINING_DATA: training_data.to_dict()} if training_data is not None else {}), **extra,
    }
    return write_payload(path, payload)


def write_payload(path: str | Path, payload: dict) -> Path:
    """A torch file of plain data (what read_payload reads back), written atomically."""
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
    """The payload of a vexkd checkpoint of this format or format 1 (its weights renamed to this
    format's), checked field by field; anything else (another format, a newer version, a
    missing or mistyped field) is a one-line CheckpointError."""
    payload = read_payload(path)
    version = payload.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is a vexkd checkpoint of format {version}, written by a newer vexkd; "
                              f"this one reads format {FORMAT_VERSION}")
    if version not in (1, FORMAT_VERSION) or isinstance(version, bool):
        raise CheckpointError(f"{path} is not a vexkd checkpoint (format 1 to {FORMAT_VERSION})")
    check_model_description(payload, path, "checkpoint")
    weights = payload.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{path}: its 'model' is not a dict of named tensors")
    if version == 1:
        payload["model"] = format_1_weights(weights, payload["modality"])
    return payload


def check_model_description(description: dict, path: str | Path, what: str) -> Config:
    """The fields a checkpoint and an ONNX sidecar share (modality, config, class names),
    checked; returns the config. One-line CheckpointError naming the file and the field."""
    modality = description.get("modality")
    if modality not in MODALITIES:
        raise CheckpointError(f"{path}: its 'modality' is {modality!r}, not one of {', '.join(MODALITIES)}")
    for field, ours in (("detection_classes", DETECTION_CLASSES), ("map_classes", MAP_CLASSES)):
        if description.get(field, list(ours)) != list(ours):
            raise CheckpointError(f"{path}: its {field} differ from this version's ({', '.join(ours)})")
    return stored_config(description, path, what)


def stored_config(description: dict, path: str | Path, what: str) -> Config:
    """The Config a checkpoint or sidecar stores, or a one-line CheckpointError."""
    data = description.get("config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: its 'config' is {type(data).__name__}, not a mapping of config fields")
    try:
        return from_dict(data)
    except (ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: its config is not one this version of vexkd reads ({error}); "
                              f"was the {what} written by another version?") from None


def state_dict_mismatch(error: RuntimeError) -> str:
    """The first mismatch load_state_dict names (its message starts with a header line)."""
    lines = str(error).splitlines()
    return lines[1].strip() if len(lines) > 1 else str(error)


def model_from_checkpoint(path: str | Path, expected_modality: str | None = None):
    """(model in eval mode, config, payload); the model is rebuilt from the stored config."""
    payload = load_checkpoint(path)
    modality = payload["modality"]
    if expected_modality is not None and modality != expected_modality:
        raise CheckpointError(f"{path} holds a {modality} model, not {expected_modality}")
    config = stored_config(payload, path, "checkpoint")
    # The checkpoint holds the trained backbone: the ImageNet file it started from is not
    # needed (nor present, on the robot that runs the model).
    camera = dataclasses.replace(config.model.camera, pretrained_backbone="")
    try:
        model = build_model(dataclasses.replace(config, model=dataclasses.replace(config.model, camera=camera)),
                            modality)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as error:
        raise CheckpointError(f"{path}: its config does not build a {modality} model "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match its own config: {state_dict_mismatch(error)}") from None
    return model.eval(), config, payload
