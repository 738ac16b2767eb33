"""The nodes' transform buffer behaves like tf2 where a consumer can tell: a bounded history
that one bad stamp cannot wipe, a restart after a time jump, lookups through any frame of
the tree, and malformed transforms refused."""
import numpy as np
import pytest
from geometry_msgs.msg import Quaternion
from tf2_msgs.msg import TFMessage

from vexkd_core.geometry import make_transform
from vexkd_ros.conversions import matrices_to_tf_message, ns_to_stamp
from vexkd_ros.tf_buffer import TransformBuffer, TransformError

pytestmark = pytest.mark.unit

SECOND = 1_000_000_000
T0 = 1_533_151_603 * SECOND  # a nuScenes-like epoch


def pose(x: float, yaw: float = 0.0) -> np.ndarray:
    return make_transform([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], [x, 0.5 * x, 0.0])


def tf(parent: str, child: str, stamp_ns: int, matrix: np.ndarray) -> TFMessage:
    return matrices_to_tf_message([(parent, child, matrix, ns_to_stamp(stamp_ns))])


def drive(buffer: TransformBuffer, start_s: float, end_s: float, parent="map", child="base_link", hz=10) -> list:
    """map -> base_link moving 1 m/s in x from start_s to end_s; returns the buffer's notes."""
    notes = []
    for k in range(int(round((end_s - start_s) * hz)) + 1):
        t = start_s + k / hz
        notes += buffer.add(tf(parent, child, T0 + int(t * SECOND), pose(t)), static=False)
    return notes


def test_one_transform_an_hour_ahead_does_not_disable_tf():
    buffer = TransformBuffer()
    drive(buffer, 0.0, 2.0)
    buffer.add(tf("map", "base_link", T0 + 3600 * SECOND, pose(3600.0)), static=False)
    drive(buffer, 2.1, 4.0)
    for t in (1.0, 3.05, 3.95):  # before and after the outlier, interpolated
        np.testing.assert_allclose(buffer.lookup("map", "base_link", T0 + int(t * SECOND)), pose(t), atol=1e-9)
    with pytest.raises(TransformError):  # never extrapolated towards the outlier
        buffer.lookup("map", "base_link", T0 + 5 * SECOND)


def test_a_looped_bag_clears_the_history_and_says_so():
    buffer = TransformBuffer()
    assert drive(buffer, 0.0, 20.0) == []
    notes = drive(buffer, 0.0, 1.0)  # the bag starts again
    assert [note.kind for note in notes] == ["time jump"] and "jumped back 19.9 s" in notes[0].text
    np.testing.assert_allclose(buffer.lookup("map", "base_link", T0 + SECOND // 2), pose(0.5), atol=1e-9)
    with pytest.raises(TransformError, match="buffer holds 1533151603.000..1533151604.000"):
        buffer.lookup("map", "base_link", T0 + 19 * SECOND)  # the first pass is gone


def test_history_is_a_bounded_window_behind_the_newest_stamp():
    buffer = TransformBuffer(history_s=2.0)
    drive(buffer, 0.0, 30.0)
    np.testing.assert_allclose(buffer.lookup("map", "base_link", T0 + 29 * SECOND), pose(29.0), atol=1e-9)
    with pytest.raises(TransformError, match="buffer holds"):
        buffer.lookup("map", "base_link", T0 + 27 * SECOND)


def rep105(buffer: TransformBuffer, odom_stamps_s=(0.0, 0.1)) -> None:
    """earth -> map (static), map -> odom (slow, with a drift correction), odom -> base_link
    (10 Hz odometry), base_link -> LIDAR_TOP (static): REP-105 under a world root."""
    buffer.add(tf("earth", "map", 0, pose(100.0, 0.3)), static=True)
    buffer.add(tf("base_link", "LIDAR_TOP", 0, pose(1.0, 0.1)), static=True)
    for k, t in enumerate(odom_stamps_s):
        buffer.add(tf("map", "odom", T0 + int(t * SECOND), pose(5.0 + k, 0.2)), static=False)
    drive(buffer, 0.0, 3.0, parent="odom")


@pytest.mark.parametrize("fixed", ["odom", "map", "earth"])
def test_any_frame_of_the_tree_can_be_the_fixed_frame(fixed):
    buffer = TransformBuffer()
    rep105(buffer, odom_stamps_s=(0.0, 1.0, 2.0, 3.0))
    t0, t1 = T0 + 1 * SECOND, T0 + 2 * SECOND + SECOND // 2
    moved = buffer.lookup_across_time("LIDAR_TOP", t1, "LIDAR_TOP", t0, fixed)
    expected = np.linalg.inv(buffer.lookup(fixed, "LIDAR_TOP", t1)) @ buffer.lookup(fixed, "LIDAR_TOP", t0)
    np.testing.assert_allclose(moved, expected, atol=1e-9)


def test_lookups_use_only_the_edges_up_to_the_common_ancestor():
    """As in tf2: with fixed frame odom, a lagging map -> odom does not matter."""
    buffer = TransformBuffer()
    rep105(buffer, odom_stamps_s=(0.0, 0.1))
    t0, t1 = T0 + 2 * SECOND, T0 + 3 * SECOND
    moved = buffer.lookup_across_time("LIDAR_TOP", t1, "LIDAR_TOP", t0, "odom")
    lidar = pose(1.0, 0.1)
    np.testing.assert_allclose(moved, np.linalg.inv(pose(3.0) @ lidar) @ pose(2.0) @ lidar, atol=1e-9)
    with pytest.raises(TransformError, match="map -> odom"):
        buffer.lookup_across_time("LIDAR_TOP", t1, "LIDAR_TOP", t0, "map")


@pytest.mark.parametrize("mutate", [
    lambda t: setattr(t.transform, "rotation", Quaternion(w=0.0, x=0.0, y=0.0, z=0.0)),
    lambda t: setattr(t.transform.rotation, "x", float("nan")),
    lambda t: setattr(t.transform.translation, "y", float("inf")),
    lambda t: setattr(t, "child_frame_id", ""),
    lambda t: setattr(t.header, "frame_id", "base_link"),
], ids=["zero quaternion", "NaN quaternion", "inf translation", "empty child", "self transform"])
@pytest.mark.parametrize("static", [False, True])
def test_malformed_transforms_are_refused_with_a_note(mutate, static):
    buffer = TransformBuffer()
    buffer.add(tf("map", "base_link", T0, pose(1.0)), static=static)
    bad = tf("map", "base_link", T0, pose(2.0))
    mutate(bad.transforms[0])
    notes = buffer.add(bad, static=static)
    assert [note.kind for note in notes] == ["rejected"]
    np.testing.assert_array_equal(buffer.lookup("map", "base_link", T0), pose(1.0))  # the good one stays
