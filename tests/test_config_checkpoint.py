"""Configs override cleanly and reject mistakes; checkpoints rebuild models and refuse
anything that is not one of ours."""
import numpy as np
import pytest
import torch

from vexkd_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from vexkd_core.config import from_dict, load_config, preset
from vexkd_core.errors import CheckpointError
from vexkd_core.models.vexkd import build_model

pytestmark = pytest.mark.unit


def test_presets_and_overrides(tmp_path):
    tiny, paper = preset("tiny"), preset("nuscenes")
    assert (tiny.grid.bev.width, paper.grid.bev.width) == (128, 180)  # +-51.2 m @ 0.8; +-54 m @ 0.6
    assert paper.map_grid.bev.width == 200 and paper.model.camera.input_width == 704
    changed = load_config("tiny", ["train.batch_size=4", "model.fusion.layers=2", "augment.flip=false",
                                   "model.decoder_channels=[16, 32]"])
    assert (changed.train.batch_size, changed.model.fusion.layers, changed.augment.flip) == (4, 2, False)
    assert changed.model.decoder_channels == (16, 32)
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("preset: tiny\ntrain:\n  epochs: 3\nmodel:\n  lidar:\n    sweeps: 1\n")
    from_file = load_config(str(yaml_file))
    assert (from_file.train.epochs, from_file.model.lidar.sweeps) == (3, 1)
    assert from_dict(changed.to_dict()) == changed  # what checkpoints store rebuilds the same config


@pytest.mark.parametrize("overrides, message", [
    (["train.batchsize=4"], "unknown config field 'train.batchsize'"),
    (["train.batch_size=four"], "expected a int"),
    (["model=3"], "is a section"),
    (["train.batch_size"], "not key=value"),
])
def test_config_mistakes_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", overrides)


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    config = load_config("tiny", ["model.fusion.layers=1"])
    model = build_model(config, "lidar")
    path = save_checkpoint(tmp_path / "m.pt", model, config, "lidar", step=7)
    payload = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert payload["step"] == 7 and payload["modality"] == "lidar"
    rebuilt, rebuilt_config, _ = model_from_checkpoint(path, expected_modality="lidar")
    assert rebuilt_config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    config = preset("tiny")
    path = save_checkpoint(tmp_path / "camera.pt", build_model(config, "camera"), config, "camera")
    with pytest.raises(CheckpointError, match="holds a camera model, not lidar"):
        model_from_checkpoint(path, expected_modality="lidar")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError, match="not a readable vexkd checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a vexkd checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    other = load_config("tiny", ["model.bev_channels=16"])
    payload = torch.load(path, weights_only=True)
    payload["config"] = other.to_dict()
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match its own config"):
        model_from_checkpoint(tmp_path / "mismatch.pt")


def test_teacher_starts_its_lidar_branch_decoder_and_heads_from_a_lidar_model(tmp_path):
    from vexkd_train.training_setup import initialise_from_lidar

    config = preset("tiny")
    torch.manual_seed(1)
    lidar = build_model(config, "lidar")
    path = save_checkpoint(tmp_path / "lidar.pt", lidar, config, "lidar")
    torch.manual_seed(2)
    teacher = build_model(config, "fusion")
    initialise_from_lidar(teacher, path)
    for name, value in lidar.encoder.state_dict().items():
        assert torch.equal(teacher.lidar_encoder.state_dict()[name], value), name
    for name, value in lidar.heads.state_dict().items():
        assert torch.equal(teacher.heads.state_dict()[name], value), name
    other = load_config("tiny", ["grid.resolution_m=0.4"])
    mismatched = save_checkpoint(tmp_path / "other.pt", build_model(other, "lidar"), other, "lidar")
    with pytest.raises(CheckpointError, match="another BEV grid"):
        initialise_from_lidar(teacher, mismatched)
