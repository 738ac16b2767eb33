"""vexkd_train.distill_diagnostics (tools/distill_diagnosis.py): its correlations and
distances mean what docs/lab_notes.md reads from them (a student matching the teacher scores
1 and 0; occupancy is the LiDAR's cells)."""
import numpy as np
import pytest
import torch

from vexkd_core.config import load_config
from vexkd_core.data.dataset import model_source
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.models.vexkd import build_model
from vexkd_train.distill_diagnostics import correlation, diagnose, occupancy

pytestmark = pytest.mark.unit

CONFIG = load_config("tiny", ["model.lidar.sweeps=1"])


@pytest.fixture(scope="module")
def source(tiny_world):
    dataroot, world = tiny_world
    return model_source(dataroot, world.version, "val", CONFIG, False)


def test_a_student_with_the_teachers_maps_scores_one_and_zero(source):
    torch.manual_seed(0)
    teacher = build_model(CONFIG, "fusion").eval()
    figures = diagnose(teacher, {"same": teacher, "lidar": build_model(CONFIG, "lidar").eval()}, source)
    for level in ("low", "high"):
        assert figures[level]["same ~ teacher"] == pytest.approx(1.0, abs=1e-5)
        assert figures[level]["same: AT distance to the teacher"] == pytest.approx(0.0, abs=1e-6)
        assert figures[level]["lidar ~ teacher"] < 0.999  # another network's maps are not the teacher's
        assert figures[level]["lidar: AT distance to the teacher"] > 1e-3


def test_occupancy_marks_the_cells_with_points(source):
    batch = collate([preprocess(source.sample(0), CONFIG)[0]])
    grid = CONFIG.grid.bev
    cells = occupancy(batch, grid).view(grid.height, grid.width)
    points = batch.points[:, 1:3].numpy()
    column = np.floor((points[:, 0] - grid.x_min) / grid.resolution).astype(int)
    row = np.floor((points[:, 1] - grid.y_min) / grid.resolution).astype(int)
    inside = (column >= 0) & (column < grid.width) & (row >= 0) & (row < grid.height)
    expected = np.zeros((grid.height, grid.width))
    expected[row[inside], column[inside]] = 1
    np.testing.assert_array_equal(cells.numpy(), expected)
    assert correlation(cells.flatten(), cells.flatten()) == pytest.approx(1.0, abs=1e-4)
    assert correlation(cells.flatten(), 1 - cells.flatten()) == pytest.approx(-1.0, abs=1e-4)
