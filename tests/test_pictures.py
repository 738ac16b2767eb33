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


def test_each_node_is_read_under_its_own_trigger_and_drawn_in_the_key_frame(tiny_world):
    """A LiDAR node answers a key frame under the LiDAR's stamp, a camera node under CAM_FRONT's
    (35 ms earlier, as in nuScenes), each in LIDAR_TOP as it stood then: the pictures take both
    as one key frame, the last that both answered, with the camera node's boxes moved into the
    key frame's LiDAR frame (here: back onto the ground truth both nodes were given)."""
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection3DArray

    from vexkd_core.classes import DETECTION_CLASSES
    from vexkd_core.data.nuscenes_source import NuScenesSource, lidar_to_global_when
    from vexkd_ros.box_messages import boxes_to_detections
    from vexkd_ros.conversions import ns_to_stamp
    from vexkd_ros.replay_pictures import _into, answer_stamp_channel, key_frame_answers

    dataroot, world = tiny_world
    source = NuScenesSource(dataroot, world.version, None, sweeps=0)
    nusc, tokens = source.nusc, source.tokens[:3]
    outputs = {}
    for answered, node in ((tokens, "lidar_detector"), (tokens[:2], "camera_detector")):
        channel = answer_stamp_channel(node)
        for token in answered:
            key_frame_to_global, truth, _ = source.ground_truth(token)
            in_answer_frame = _into(truth, np.linalg.inv(lidar_to_global_when(nusc, token, channel)) @ key_frame_to_global)
            stamp = nusc.get("sample_data", nusc.get("sample", token)["data"][channel])["timestamp"] * 1000
            header = Header(stamp=ns_to_stamp(stamp), frame_id="LIDAR_TOP")
            outputs.setdefault(f"/{node}/output/objects", {})[stamp] = deserialize_message(
                boxes_to_detections(in_answer_frame, DETECTION_CLASSES, header), Detection3DArray)
    assert answer_stamp_channel("camera_detector") == "CAM_FRONT"
    assert answer_stamp_channel("lidar_detector") == answer_stamp_channel("fusion_detector") == "LIDAR_TOP"

    index, answers = key_frame_answers(outputs, source, ("lidar_detector", "camera_detector"))
    assert source.tokens[index] == max(tokens[:2], key=lambda token: nusc.get("sample", token)["timestamp"])
    truth = source.ground_truth(source.tokens[index])[1]
    assert len(truth) > 0
    for node in ("lidar_detector", "camera_detector"):
        boxes, maps = answers[node]
        np.testing.assert_allclose(boxes.center, truth.center, atol=1e-6)
        np.testing.assert_allclose(np.cos(boxes.yaw - truth.yaw), 1.0, atol=1e-9)
        assert maps == {}
    with pytest.raises(ValueError, match="no key frame was answered by all of lidar_detector, camera_detector"):
        key_frame_answers({"/lidar_detector/output/objects": outputs["/lidar_detector/output/objects"]}, source,
                          ("lidar_detector", "camera_detector"))
