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
    for part in ("lidar_encoder", "decoder", "heads"):
        for name, value in getattr(lidar, part).state_dict().items():
            assert torch.equal(getattr(teacher, part).state_dict()[name], value), (part, name)
    other = load_config("tiny", ["grid.resolution_m=0.4"])
    mismatched = save_checkpoint(tmp_path / "other.pt", build_model(other, "lidar"), other, "lidar")
    with pytest.raises(CheckpointError, match="another BEV grid"):
        initialise_from_lidar(teacher, mismatched)


# Format 1's names (the Teacher and Student classes, before BEVModel) of today's state-dict
# prefixes; a student's one encoder was plain `encoder.`.
FORMAT_1_NAMES = (("encoders.lidar.", "lidar_encoder."), ("encoders.camera.", "camera_encoder."), ("fuser.", "fusion."),
                  ("decoder.", "heads.decoder."), ("heads.detection.", "heads.detection_head."),
                  ("heads.segmentation.", "heads.map_head."))


def format_1_name(key: str, modality: str) -> str:
    for today, before in FORMAT_1_NAMES:
        if key.startswith(today):
            if before.endswith("_encoder.") and modality != "fusion":
                before = "encoder."
            return before + key[len(today):]
    raise AssertionError(f"{key} has no format-1 name")


def test_checkpoints_written_before_the_one_model_class_load_with_the_same_outputs(tmp_path):
    """Format 1 checkpoints load (weights_only), their weights renamed, and the model computes
    what it did: the shipped camera student as it is (its SHA-256 stays the recorded one), and a
    LiDAR student, a camera student and teachers of both fusers written with format 1's names."""
    from pathlib import Path

    from vexkd_core.checkpoint import FORMAT_VERSION
    from vexkd_core.models.vexkd import network_outputs
    from vexkd_core.onnx_export import example_inputs

    def outputs(model, modality, config) -> dict:
        with torch.no_grad():
            return network_outputs(model.eval().network(example_inputs(config, modality, points=700, seed=0), 1))

    def assert_same(left: dict, right: dict) -> None:
        assert list(left) == list(right)
        for name in left:
            assert torch.equal(left[name], right[name]), name

    shipped = Path(__file__).resolve().parents[1] / "pretrained" / "camera_world_seed3.pt"
    written = torch.load(shipped, weights_only=True)
    assert written["format_version"] == 1 and any(key.startswith("encoder.") for key in written["model"])
    model, config, _ = model_from_checkpoint(shipped, expected_modality="camera")
    # The same tensors by position: today's parameters and buffers are in format 1's order.
    by_position = build_model(config, "camera")
    assert len(by_position.state_dict()) == len(written["model"])
    by_position.load_state_dict(dict(zip(by_position.state_dict(), written["model"].values())))
    assert_same(model.state_dict(), by_position.state_dict())
    assert_same(outputs(model, "camera", config), outputs(by_position, "camera", config))

    for modality, overrides in (("lidar", []), ("camera", ["train.tasks=map"]), ("fusion", []),
                                ("fusion", ["model.fuser=convfuser"])):
        config = load_config("tiny", ["model.lidar.sweeps=1", *overrides])
        torch.manual_seed(3)
        today = build_model(config, modality).eval()
        path = save_checkpoint(tmp_path / f"{modality}.pt", today, config, modality)
        payload = torch.load(path, weights_only=True)
        assert payload["format_version"] == FORMAT_VERSION
        payload.update(format_version=1, model={format_1_name(key, modality): value
                                                for key, value in payload["model"].items()})
        torch.save(payload, path)
        loaded, _, _ = model_from_checkpoint(path, expected_modality=modality)
        assert_same(loaded.state_dict(), today.state_dict())
        assert_same(outputs(loaded, modality, config), outputs(today, modality, config))
