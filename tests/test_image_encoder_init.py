"""A camera model's image stages started from another trained model (`--image-encoder-from`), and
the pretrained camera checkpoint that the demo's camera models start from."""
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vexkd_core.checkpoint import model_from_checkpoint, save_checkpoint
from vexkd_core.config import load_config, preset
from vexkd_core.errors import CheckpointError
from vexkd_core.models.camera_encoder import CameraEncoder
from vexkd_core.models.vexkd import build_model
from vexkd_train.training_setup import initialise_image_stages

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
CONFIG = load_config("tiny", ["model.lidar.sweeps=1", "train.batch_size=1"])


def image_stages(encoder: CameraEncoder) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name in CameraEncoder.IMAGE_STAGES
            for key, value in getattr(encoder, name).state_dict().items()}


def rest_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight outside the image stages: the BEV side, (fuser,) decoder and heads."""
    stages = tuple(f"{name}." for name in CameraEncoder.IMAGE_STAGES)
    return {key: value.clone() for key, value in model.state_dict().items()
            if not any(f".{stage}" in f".{key}" for stage in stages)}


def saved_camera(tmp_path: Path, config=CONFIG, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(tmp_path / f"camera-{seed}.pt", build_model(config, "camera"), config, "camera")


def assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.mark.parametrize("modality", ["camera", "fusion"])
def test_a_camera_student_or_teacher_takes_the_image_stages_and_nothing_else(modality, tmp_path):
    source, _, _ = model_from_checkpoint(saved_camera(tmp_path))
    torch.manual_seed(0)
    model = build_model(CONFIG, modality)
    own_rest = rest_of(model)
    assert not torch.equal(model.camera_encoder.backbone.stem[0][0].weight,
                           source.camera_encoder.backbone.stem[0][0].weight)  # different starts, so equality below means a copy

    initialise_image_stages(model, tmp_path / "camera-1.pt")

    assert_same(image_stages(model.camera_encoder), image_stages(source.camera_encoder))
    assert_same(rest_of(model), own_rest)  # BEV smoothing, LiDAR branch, fuser, decoder, heads: untouched


def test_what_cannot_start_an_image_encoder_is_named(tmp_path):
    torch.manual_seed(0)
    lidar = save_checkpoint(tmp_path / "lidar.pt", build_model(CONFIG, "lidar"), CONFIG, "lidar")
    camera = saved_camera(tmp_path)
    with pytest.raises(CheckpointError, match="holds a lidar model: it has no image encoder"):
        initialise_image_stages(build_model(CONFIG, "camera"), lidar)
    with pytest.raises(ValueError, match="for models that read cameras"):
        initialise_image_stages(build_model(CONFIG, "lidar"), camera)
    other_bins = load_config("tiny", ["model.lidar.sweeps=1", "model.camera.depth_step_m=1.0"])
    with pytest.raises(CheckpointError, match="depth bins .* differ from this model's"):
        initialise_image_stages(build_model(other_bins, "camera"), camera)
    other_width = load_config("tiny", ["model.lidar.sweeps=1", "model.camera.feature_channels=32"])
    with pytest.raises(CheckpointError, match="image encoder does not fit this model's config: .*size mismatch"):
        initialise_image_stages(build_model(other_width, "camera"), camera)


def test_the_student_command_starts_from_the_image_encoder_and_refuses_a_lidar_student(tiny_world, tmp_path):
    camera = saved_camera(tmp_path)
    common = ["--dataroot", tiny_world[0], "--set", "model.lidar.sweeps=1", "--set", "train.batch_size=1",
              "--max-steps", "1", "--image-encoder-from", camera]
    refused = subprocess.run([BIN / "vexkd-train", "student", "--modality", "lidar", "--out", tmp_path / "l",
                              *map(str, common)], capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "for models that read cameras" in lines[0], refused.stderr

    trained = subprocess.run([BIN / "vexkd-train", "student", "--modality", "camera", "--out", tmp_path / "c",
                              *map(str, common)], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    student, _, _ = model_from_checkpoint(tmp_path / "c" / "model.pt")
    source, _, _ = model_from_checkpoint(camera)
    fresh = image_stages(build_model(CONFIG, "camera").camera_encoder)
    start = image_stages(source.camera_encoder)
    after = image_stages(student.camera_encoder)
    weights = [key for key in start if key.endswith("weight") and start[key].dim() == 4]  # the convolutions
    # One warm-up step moves each weight by about the learning rate; a fresh start is far away.
    assert max((after[key] - start[key]).abs().max().item() for key in weights) < 1e-3
    assert min((fresh[key] - start[key]).abs().max().item() for key in weights) > 1e-2


def test_the_shipped_pretrained_camera_model_fits_the_tiny_preset_and_is_the_one_recorded():
    path = PRETRAINED / "camera_world_seed3.pt"
    model, config, payload = model_from_checkpoint(path, expected_modality="camera")  # weights_only
    assert config == preset("tiny")  # the demo's camera student and teacher take its image stages as they are
    for modality in ("camera", "fusion"):
        initialise_image_stages(build_model(preset("tiny"), modality), path)
    recorded = re.search(r"SHA-256 `([0-9a-f]{64})`", (PRETRAINED / "README.md").read_text())
    assert recorded and recorded.group(1) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert payload["step"] == 1152  # the 12 epochs over 192 samples README.md describes
