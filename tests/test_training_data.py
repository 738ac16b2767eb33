"""Checkpoints say what they are: the trainer records the dataset a model was trained on (name,
version, split, sample count, synthetic world or real data), export copies it into the ONNX
sidecar, and training_data_line describes it from either; checkpoints of older vexkd without
it still load and say so; a mistyped record is described as unreadable, never a crash."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from vexkd_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import map_source_grid
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.inference import load_predictor, model_file_description
from vexkd_core.models.vexkd import build_model
from vexkd_core.onnx_export import ExportError, export_onnx
from vexkd_core.onnx_sidecar import read_sidecar
from vexkd_core.training_data import NOT_RECORDED, TrainingData, training_data_line

pytestmark = pytest.mark.unit

CONFIG = load_config("tiny", ["train.batch_size=1", "model.lidar.sweeps=1"])
RECORD = TrainingData("demo_world", "v1.0-trainval", "train", 48, True)


def saved(path: Path, **record) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(CONFIG, "lidar"), CONFIG, "lidar", **record)


def test_a_trained_checkpoint_records_the_synthetic_world_it_was_trained_on(tiny_world, tmp_path):
    from vexkd_train.trainer import FINAL, LAST, RunOptions, train

    dataroot, world = tiny_world
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(CONFIG, True))
    torch.manual_seed(0)
    train(build_model(CONFIG, "lidar"), CONFIG, source, "lidar",
          RunOptions(tmp_path / "run", max_steps=1, max_epochs=1, progress=False))
    expected = {"dataset": dataroot.name, "version": "v1.0-trainval", "split": "train", "samples": 4,
                "synthetic": True}
    for name in (FINAL, LAST):
        payload = load_checkpoint(tmp_path / "run" / name)
        assert payload["training_data"] == expected, name
        assert training_data_line(payload) == \
            f"trained on synthetic world '{dataroot.name}' (v1.0-trainval, split train, 4 samples)"


def test_a_dataset_without_the_synthetic_marker_is_real_data(tiny_world, tmp_path):
    dataroot, world = tiny_world
    real = tmp_path / "nuscenes"
    shutil.copytree(dataroot, real, ignore=shutil.ignore_patterns(".vexkd-synthetic.json", "samples", "sweeps"))
    record = TrainingData.of_source(NuScenesSource(real, world.version, "val", 0))
    assert record == TrainingData("nuscenes", "v1.0-trainval", "val", 8, False)
    assert record.describe() == "trained on nuScenes v1.0-trainval val (8 samples)"
    assert TrainingData.from_payload(record.to_dict()) == record


def test_export_copies_the_record_into_the_sidecar(tmp_path):
    checkpoint = saved(tmp_path / "lidar.pt", training_data=RECORD)
    result = export_onnx(checkpoint, tmp_path / "onnx")
    assert json.loads(result.sidecar_path.read_text())["training_data"] == RECORD.to_dict()
    line = "trained on synthetic world 'demo_world' (v1.0-trainval, split train, 48 samples)"
    assert training_data_line(read_sidecar(result.onnx_path)) == line == RECORD.describe()
    assert training_data_line(model_file_description(result.onnx_path)) == line
    assert training_data_line(model_file_description(checkpoint)) == line


def test_checkpoints_of_an_older_vexkd_still_load_and_say_so(tmp_path):
    checkpoint = saved(tmp_path / "old.pt")
    payload = load_checkpoint(checkpoint)
    assert "training_data" not in payload and training_data_line(payload) == NOT_RECORDED
    model_from_checkpoint(checkpoint, expected_modality="lidar")
    load_predictor(checkpoint)
    result = export_onnx(checkpoint, tmp_path / "onnx")
    sidecar = read_sidecar(result.onnx_path)
    assert "training_data" not in sidecar and training_data_line(sidecar) == NOT_RECORDED


@pytest.mark.parametrize("record, named", [
    ({**RECORD.to_dict(), "samples": "many"}, "samples"),
    ({**RECORD.to_dict(), "synthetic": 1}, "synthetic"),
    ({"dataset": "w"}, "version"),
    ([1, 2], "list"),
])
def test_a_mistyped_record_is_described_as_unreadable_and_not_exported(tmp_path, record, named):
    payload = load_checkpoint(saved(tmp_path / "good.pt", training_data=RECORD))
    payload["training_data"] = record
    torch.save(payload, tmp_path / "edited.pt")
    line = training_data_line(load_checkpoint(tmp_path / "edited.pt"))  # loads: the record changes no weights
    assert line.startswith("training data unreadable") and named in line and "\n" not in line, line
    with pytest.raises(ExportError, match="training_data record does not read"):
        export_onnx(tmp_path / "edited.pt", tmp_path / "onnx")
