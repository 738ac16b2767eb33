"""Proof that targets, decoding and evaluation agree: the tiny teacher, trained on two
samples, scores near-perfectly on those samples through the official nuScenes evaluation."""
import json

import pytest

from vexkd_core.config import load_config
from vexkd_core.data.dataset import model_source
from vexkd_core.data.synthetic import SynthConfig, write_dataset
from vexkd_core.models.vexkd import build_model
from vexkd_train.evaluate import evaluate
from vexkd_train.trainer import RunOptions, train

pytestmark = pytest.mark.slow

# Seed 9's val scene holds all 10 classes within their evaluation ranges and all 6 map
# classes in its first two samples (with fewer, even perfect predictions could not reach 0.9).
TWO_SAMPLES = dict(scenes=2, val_scenes=1, samples_per_scene=2, sweeps=1, camera_sweeps=0, image_size=(320, 180),
                   seed=9, workers=1)


def test_tiny_teacher_overfits_two_samples(tmp_path):
    import torch

    world = SynthConfig(out=tmp_path / "world", **TWO_SAMPLES)
    write_dataset(world, progress=False)
    config = load_config("tiny", ["train.augment=false", "train.learning_rate=0.005", "train.map_weight=3",
                                  "model.lidar.sweeps=1", "train.checkpoint_every=1000"])
    source = model_source(world.out, world.version, "val", config, False)
    assert len(source) == 2
    torch.manual_seed(0)
    checkpoint = train(build_model(config, "fusion"), config, source, "fusion",
                       RunOptions(tmp_path / "run", max_epochs=300, progress=False))
    metrics = evaluate(checkpoint, world.out, world.version, "val", tmp_path / "eval", progress=False)
    summary = json.dumps({"detection": metrics["detection"]["per_class_ap"], "map": metrics["map"]["iou"]})
    assert metrics["detection"]["mAP"] > 0.9, summary
    assert metrics["map"]["mIoU"] > 0.9, summary
