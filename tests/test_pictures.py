"""The demo's replay pictures on a tiny synthetic map: false positives, misses and hits of a map
class come out in different colours, every map class's ground truth is drawn, the legend and
the camera names are on the pictures; the distillation feature picture carries colour bars."""
import numpy as np
import pytest
import torch

from vexkd_core.classes import MAP_CLASSES
from vexkd_core.structures import BEVGrid, Boxes3D
from vexkd_ros.replay_pictures import ERROR_COLOURS, ERROR_PIXELS, LEGEND_WIDTH, MAP_TINTS, PIXELS, \
    _outline, bev_panel, bev_picture, camera_panels, error_map, map_panel
from vexkd_ros.scene_messages import GT_MAP_GRID
from vexkd_train.pictures import PANEL, features_picture

pytestmark = pytest.mark.unit

HALF_EXTENT = GT_MAP_GRID.width * GT_MAP_GRID.resolution / 2
PREDICTION_GRID = BEVGrid.centered(50.0, 1.0)  # a node's map grid: coarser and smaller than the ground truth's


def region(grid: BEVGrid, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    """A [y, x] mask on `grid` of the cells whose centres lie in the x and y ranges (metres)."""
    xs = grid.x_min + (np.arange(grid.width) + 0.5) * grid.resolution
    ys = grid.y_min + (np.arange(grid.height) + 0.5) * grid.resolution
    return ((ys[:, None] > y[0]) & (ys[:, None] < y[1])) & ((xs[None] > x[0]) & (xs[None] < x[1]))


def scene() -> tuple[np.ndarray, dict]:
    """Drivable area true 0..20 m ahead and predicted 10..30 m ahead; a walkway true but never
    predicted. So 5 m ahead is a miss, 15 m a hit, 25 m a false positive."""
    truth = np.zeros((len(MAP_CLASSES),) + (GT_MAP_GRID.height, GT_MAP_GRID.width), bool)
    truth[MAP_CLASSES.index("drivable_area")] = region(GT_MAP_GRID, (0, 20), (-10, 10))
    truth[MAP_CLASSES.index("walkway")] = region(GT_MAP_GRID, (-30, -20), (-10, 10))
    predicted = region(PREDICTION_GRID, (10, 30), (-10, 10)).astype(float)
    return truth, {"drivable_area": (predicted, PREDICTION_GRID)}


def pixel(size: int, x: float, y: float) -> tuple[int, int]:
    """(row, column) of LiDAR-frame metres in a size x size picture (forward up, left to the left)."""
    scale = size / (2 * HALF_EXTENT)
    return int((HALF_EXTENT - x) * scale), int((HALF_EXTENT - y) * scale)


def test_false_positives_misses_and_hits_have_their_own_colours():
    truth, maps = scene()
    main = map_panel(truth, maps, HALF_EXTENT)
    miss, hit, false_positive = (tuple(main[pixel(PIXELS, x, 0.0)]) for x in (5.0, 15.0, 25.0))
    assert false_positive != miss and hit != miss
    errors = error_map("drivable_area", truth[0], maps["drivable_area"], HALF_EXTENT)
    colours = [tuple(int(c) for c in errors[pixel(ERROR_PIXELS, x, 0.0)]) for x in (15.0, 25.0, 5.0)]
    assert colours == list(ERROR_COLOURS.values()) and len(set(colours)) == 3


def test_every_map_class_has_its_ground_truth_drawn():
    truth, maps = scene()
    main = map_panel(truth, maps, HALF_EXTENT)
    walkway_outline = np.all(main == _outline(MAP_TINTS["walkway"]), axis=-1)
    assert walkway_outline.sum() > 100  # the unpredicted walkway's outline
    unpublished = error_map("walkway", truth[MAP_CLASSES.index("walkway")], None, HALF_EXTENT)
    assert np.all(unpublished[pixel(ERROR_PIXELS, -25.0, 0.0)] == ERROR_COLOURS["true, not predicted"])


def test_the_bev_picture_has_a_column_per_node_and_a_legend():
    truth, maps = scene()
    boxes = Boxes3D(np.array([[15.0, 0.0, 0.0]]), np.array([[4.0, 2.0, 1.6]]), np.zeros(1),
                    np.zeros((1, 2)), np.zeros(1, int), np.array([0.9]))
    column = bev_panel("camera_detector", boxes, truth, boxes, maps, HALF_EXTENT)
    assert column.shape == (PIXELS + 2 * ERROR_PIXELS, PIXELS, 3)
    picture = bev_picture([column, column])
    assert picture.shape[1] == 2 * (PIXELS + 6) + LEGEND_WIDTH
    assert picture[:, -LEGEND_WIDTH:].max() > 200  # the legend's white text


def test_camera_tiles_carry_their_names():
    class View:
        def __init__(self, channel):
            self.channel, self.image = channel, np.full((90, 160, 3), 60, np.uint8)
            self.intrinsics, self.camera_to_lidar = np.eye(3), np.eye(4)

    channels = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
    sample = type("Sample", (), {"cameras": [View(c) for c in channels]})()
    empty = Boxes3D(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)), np.zeros(0, int), np.zeros(0))
    tiles = camera_panels(sample, empty, width=320)
    for row in range(2):
        for column in range(3):
            corner = tiles[row * 180:row * 180 + 26, column * 320:column * 320 + 200]
            assert corner.max() > 200 and corner.min() == 0  # white name on its dark box


@torch.no_grad()
def test_the_feature_picture_has_a_colour_bar_per_row():
    class Model(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, batch):
            feature = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 4, 8, 8) * self.scale
            return type("Output", (), {"low": feature, "high": feature.flip(-1)})()

    picture = features_picture(Model(1.0), {"student": Model(2.0)}, None)
    assert picture.shape[0] == 2 * PANEL and picture.shape[1] > 2 * PANEL  # the bars on the right
