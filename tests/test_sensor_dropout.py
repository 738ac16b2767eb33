"""The teacher's sensor dropout: a training sample loses one sensor, as a rig missing it delivers it."""
import pytest
import torch

from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, model_source

EPOCHS = 6


def items(tiny_world, dropout: float):
    dataroot, world = tiny_world
    config = load_config("tiny", ["model.lidar.sweeps=2"])
    dataset = TrainingSet(model_source(dataroot, world.version, "train", config, True), config, True,
                          sensor_dropout=dropout)
    for epoch in range(EPOCHS):
        dataset.set_epoch(epoch)
        for position in range(len(dataset)):
            yield dataset[position][0]


def test_each_sample_loses_one_sensor_and_keeps_the_other_as_augmented(tiny_world):
    dropped = {"lidar": 0, "camera": 0}
    for kept, full in zip(items(tiny_world, 1.0), items(tiny_world, 0.0)):
        assert len(full.points) > 0 and bool(full.camera_valid.all())
        no_points, no_cameras = len(kept.points) == 0, not bool(kept.camera_valid.any())
        assert no_points != no_cameras  # exactly one sensor goes
        if no_points:
            dropped["lidar"] += 1
            assert torch.equal(kept.images, full.images)  # the other sensor as augmented without dropout
        else:
            dropped["camera"] += 1
            assert torch.equal(kept.points, full.points)
    assert dropped["lidar"] > 0 and dropped["camera"] > 0


def test_no_dropout_leaves_every_sensor(tiny_world):
    for inputs in items(tiny_world, 0.0):
        assert len(inputs.points) > 0 and bool(inputs.camera_valid.all())


def test_a_dropout_outside_zero_to_one_is_refused(tiny_world):
    with pytest.raises(ValueError, match="sensor dropout must be a probability"):
        next(items(tiny_world, 1.5))
