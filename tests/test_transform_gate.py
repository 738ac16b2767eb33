"""A trigger waits for the transform of its stamp (tf_timeout at most) without blocking newer
ones, as tf2's MessageFilter holds a message: simulated 20 Hz clouds with /tf lagging them by
0, 50 and 300 ms, through the real TransformBuffer and the pipeline's own placement."""
import numpy as np
import pytest
from test_pipeline import SECOND, T0, pipeline, settings, sweep

from vexkd_core.geometry import make_transform
from vexkd_ros.conversions import matrices_to_tf_message, ns_to_stamp
from vexkd_ros.pipeline import Trigger
from vexkd_ros.tf_buffer import TransformBuffer
from vexkd_ros.transform_gate import Placement, TransformGate

CLOUD_PERIOD_NS = SECOND // 20
POLL_S = 0.01  # the node's timer


def pose_at(stamp_ns: int) -> np.ndarray:
    t = (stamp_ns - T0) * 1e-9
    return make_transform([np.cos(0.05 * t), 0, 0, np.sin(0.05 * t)], [10.0 * t, 0.0, 0.0])


def replay(lag_ms: int, tf_timeout: float, clouds: int = 20):
    """Clouds at 20 Hz, each one's map <- LIDAR_TOP arriving `lag_ms` after it, the gate polled
    every 10 ms. Returns [(stamp_ns, released at s, transform known then)] in release order."""
    tf = TransformBuffer()
    tf.add(matrices_to_tf_message([("base_link", "LIDAR_TOP", np.eye(4), ns_to_stamp(0))]), static=True)
    gate = TransformGate(tf)
    events = [(k * CLOUD_PERIOD_NS * 1e-9, "cloud", T0 + k * CLOUD_PERIOD_NS) for k in range(clouds)]
    events += [(k * CLOUD_PERIOD_NS * 1e-9 + lag_ms * 1e-3, "tf", T0 + k * CLOUD_PERIOD_NS) for k in range(clouds)]
    events += [(i * POLL_S, "poll", 0) for i in range(int((clouds * 0.05 + lag_ms * 1e-3 + tf_timeout) / POLL_S) + 3)]
    released = []

    def note(items, now):
        released.extend((stamp, now, tf.can_transform("map", "LIDAR_TOP", stamp)) for stamp in items)

    order = {"tf": 0, "cloud": 1, "poll": 2}  # at equal times: a transform first, as the race may go
    for now, kind, stamp in sorted(events, key=lambda e: (round(e[0], 9), order[e[1]])):
        if kind == "cloud":
            note(gate.offer(stamp, Placement("map", "LIDAR_TOP", stamp), tf_timeout, now), now)
        elif kind == "tf":
            tf.add(matrices_to_tf_message([("map", "base_link", pose_at(stamp), ns_to_stamp(stamp))]), static=False)
            note(gate.release(now), now)
        else:
            note(gate.release(now), now)
    return released


@pytest.mark.parametrize("lag_ms", [0, 50, 300])
def test_each_cloud_runs_once_with_its_transform_when_tf_lags_within_the_timeout(lag_ms):
    released = replay(lag_ms, tf_timeout=0.5)
    stamps = [T0 + k * CLOUD_PERIOD_NS for k in range(20)]
    assert [stamp for stamp, _, _ in released] == stamps  # each once, in order: none lost, none blocked
    assert all(known for _, _, known in released)
    delays = [now - (stamp - T0) * 1e-9 for stamp, now, _ in released]
    assert max(delays) <= lag_ms * 1e-3 + 1e-9  # released as soon as its transform arrived


def test_past_the_timeout_a_cloud_runs_without_its_transform_after_tf_timeout():
    released = replay(300, tf_timeout=0.1)
    assert [stamp for stamp, _, _ in released] == [T0 + k * CLOUD_PERIOD_NS for k in range(20)]
    assert not any(known for _, _, known in released)
    delays = [now - (stamp - T0) * 1e-9 for stamp, now, _ in released]
    assert min(delays) >= 0.1 - 1e-9 and max(delays) <= 0.1 + POLL_S + 1e-9


def test_a_trigger_that_needs_no_transform_passes_at_once_and_releases_older_ones():
    gate = TransformGate(TransformBuffer())
    assert gate.offer("old", Placement("map", "LIDAR_TOP", T0), 1.0, now=0.0) == []
    assert gate.offer("new", None, 1.0, now=0.01) == ["old", "new"]  # the older one is superseded, not kept
    assert len(gate) == 0


def test_the_queue_is_bounded():
    gate = TransformGate(TransformBuffer(), capacity=3)
    released = [gate.offer(k, Placement("map", "LIDAR_TOP", T0 + k), 10.0, now=0.0) for k in range(5)]
    assert released == [[], [], [], [0], [1]] and len(gate) == 3


@pytest.mark.parametrize("placed", [True, False])
def test_the_pipeline_says_when_a_trigger_ran_without_its_transform(placed):
    """A cloud released with its transform keeps its past sweeps; one released at tf_timeout
    before /tf knew its stamp runs on the trigger sweep alone and names tf_timeout."""
    tf = TransformBuffer()
    tf.add(matrices_to_tf_message([("base_link", "LIDAR_TOP", np.eye(4), ns_to_stamp(0))]), static=True)
    p = pipeline(tf=tf)
    chosen = p.resolve(settings(tf_timeout=0.1))
    for k in range(3):
        cloud = sweep(T0 + k * CLOUD_PERIOD_NS)
        if placed or k < 2:  # timed out: the newest cloud's transform has not come yet
            tf.add(matrices_to_tf_message([("map", "base_link", pose_at(cloud.stamp_ns), ns_to_stamp(cloud.stamp_ns))]),
                   static=False)
        kept, _ = p.add_sweep(cloud)
    trigger = Trigger(kept.stamp_ns, kept.frame_id, kept)
    assert p.placement(trigger, chosen) == Placement("map", "LIDAR_TOP", kept.stamp_ns)
    result = p.run(trigger, chosen)
    if placed:
        assert result.notes == []
    else:
        assert result.notes[0] == ("no transform map <- LIDAR_TOP at the trigger's stamp within tf_timeout 0.1 s: "
                                   "past sweeps and cameras off the trigger time cannot be placed")
        assert len(result.notes) == 3 and all(n.startswith("past sweep left out") for n in result.notes[1:])
