"""The teacher's sensor dropout: a training sample loses one sensor, as a rig missing it delivers it."""
import pytest
import torch

from vexkd_core.config import load_config
from vexkd_core.data.dataset import TrainingSet, model_source

pytestmark = pytest.mark.unit

EPOCHS = 6


def items(tiny_world, dropout: float, epochs: int = EPOCHS):
    dataroot, world = tiny_world
    config = load_config("tiny", ["model.lidar.sweeps=2"])
    dataset = TrainingSet(model_source(dataroot, world.version, "train", config, True), config, True,
                          sensor_dropout=dropout)
    for epoch in range(epochs):
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


def test_at_one_half_a_quarter_lose_lidar_a_quarter_their_cameras(tiny_world):
    counts = {"none": 0, "lidar": 0, "camera": 0}
    for inputs in items(tiny_world, 0.5, epochs=40):  # 160 draws: expected 80 / 40 / 40
        counts["lidar" if len(inputs.points) == 0 else "camera" if not bool(inputs.camera_valid.any()) else "none"] += 1
    assert 60 <= counts["none"] <= 100 and 25 <= counts["lidar"] <= 55 and 25 <= counts["camera"] <= 55, counts


def test_no_dropout_leaves_every_sensor(tiny_world):
    for inputs in items(tiny_world, 0.0):
        assert len(inputs.points) > 0 and bool(inputs.camera_valid.all())


def test_a_dropout_outside_zero_to_one_is_refused(tiny_world):
    with pytest.raises(ValueError, match="sensor dropout must be a probability"):
        next(items(tiny_world, 1.5))
