"""A trigger waits for what it needs without blocking newer ones, as tf2's MessageFilter and
Autoware's camera synchronisation hold inputs: the transform of its stamp (tf_timeout at most;
simulated 20 Hz clouds with /tf lagging them by 0, 50 and 300 ms, through the real
TransformBuffer) and the frames of the cameras that fire after it (max_camera_delay at most;
six cameras at 12 Hz firing over 43 ms in nuScenes' order)."""
import numpy as np
import pytest

from tests.support.pipeline_rig import SECOND, T0, StandingStill, camera_frame, pipeline, settings, sweep
from vexkd_core.geometry import make_transform
from vexkd_core.runtime.node_inputs import Calibration
from vexkd_core.runtime.pipeline import Trigger
from vexkd_core.runtime.trigger_gate import TriggerGate
from vexkd_ros.conversions import matrices_to_tf_message, ns_to_stamp
from vexkd_ros.tf_buffer import TransformBuffer

pytestmark = pytest.mark.unit

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
    p, chosen = pipeline(tf=tf), settings(tf_timeout=tf_timeout)
    gate = TriggerGate()
    events = [(k * CLOUD_PERIOD_NS * 1e-9, "cloud", T0 + k * CLOUD_PERIOD_NS) for k in range(clouds)]
    events += [(k * CLOUD_PERIOD_NS * 1e-9 + lag_ms * 1e-3, "tf", T0 + k * CLOUD_PERIOD_NS) for k in range(clouds)]
    events += [(i * POLL_S, "poll", 0) for i in range(int((clouds * 0.05 + lag_ms * 1e-3 + tf_timeout) / POLL_S) + 3)]
    released = []

    def note(items, now):
        released.extend((stamp, now, tf.can_transform("map", "LIDAR_TOP", stamp)) for stamp in items)

    order = {"tf": 0, "cloud": 1, "poll": 2}  # at equal times: a transform first, as the race may go
    for now, kind, stamp in sorted(events, key=lambda e: (round(e[0], 9), order[e[1]])):
        if kind == "cloud":
            trigger = Trigger(stamp, "LIDAR_TOP", sweep(stamp, 10))
            note([t.stamp_ns for t in gate.offer(trigger, lambda waited, t=trigger: p.ready(t, chosen, waited), now)],
                 now)
        else:
            if kind == "tf":
                tf.add(matrices_to_tf_message([("map", "base_link", pose_at(stamp), ns_to_stamp(stamp))]),
                       static=False)
            note([t.stamp_ns for t in gate.release(now)], now)
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


def test_a_ready_trigger_releases_the_older_held_ones_and_the_queue_is_bounded():
    gate = TriggerGate(capacity=3)
    assert gate.offer("old", lambda waited: False, now=0.0) == []
    assert gate.offer("new", lambda waited: True, now=0.01) == ["old", "new"]  # the older one is superseded
    assert len(gate) == 0
    released = [gate.offer(k, lambda waited: waited >= 10.0, now=0.0) for k in range(5)]
    assert released == [[], [], [], [0], [1]] and len(gate) == 3
    assert gate.release(now=10.0) == [2, 3, 4]


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
    assert p.ready(trigger, chosen, waited_s=0.0) == placed and p.ready(trigger, chosen, waited_s=0.1)
    result = p.run(trigger, chosen)
    if placed:
        assert result.notes == []
    else:
        assert result.notes[0] == ("no transform map <- LIDAR_TOP at the trigger's stamp within tf_timeout 0.1 s: "
                                   "past sweeps and cameras off the trigger time cannot be placed")
        assert len(result.notes) == 3 and all(n.startswith("past sweep left out") for n in result.notes[1:])


# nuScenes v1.0-mini, scene-0061's first sample: each camera's stamp minus CAM_FRONT's (ms), in
# the order they fire as the LiDAR sweeps past them; CAM_FRONT is second, not last.
NUSCENES_FIRING_MS = {"CAM_FRONT_LEFT": -7.616, "CAM_FRONT": 0.0, "CAM_FRONT_RIGHT": 7.879,
                      "CAM_BACK_RIGHT": 15.433, "CAM_BACK": 25.065, "CAM_BACK_LEFT": 34.963}
CAMERA_PERIOD_NS = SECOND // 12


def test_a_camera_frame_waits_for_the_cameras_that_fire_after_cam_front_and_takes_all_six():
    """Six cameras at 12 Hz in nuScenes' order, each image arriving 5 ms after its stamp;
    the CAM_FRONT trigger of each frame runs once the last camera of its sweep is in (not at
    max_camera_delay), with the six images of that sweep."""
    from vexkd_core.data.sample import CAMERA_CHANNELS

    p, chosen, gate = pipeline("camera"), settings(max_camera_delay=0.12), TriggerGate()
    k = np.array([[250.0, 0, 160.0], [0, 250.0, 90.0], [0, 0, 1]])
    for index in range(len(CAMERA_CHANNELS)):
        p.set_calibration(index, Calibration(k, 320, 180))
    arrivals = sorted((T0 + n * CAMERA_PERIOD_NS + int(NUSCENES_FIRING_MS[channel] * 1e6) + 5_000_000, index)
                      for n in range(6) for index, channel in enumerate(CAMERA_CHANNELS))
    released = []
    for arrival_ns, index in arrivals:
        now = (arrival_ns - T0) * 1e-9
        stamp_ns = arrival_ns - 5_000_000
        p.add_frame(index, camera_frame(index, stamp_ns))
        if index == 0:
            trigger = Trigger(stamp_ns, CAMERA_CHANNELS[0], None)
            out = gate.offer(trigger, lambda waited, t=trigger: p.ready(t, chosen, waited), now)
        else:
            out = gate.release(now)
        released += [(trigger.stamp_ns, now) for trigger in out]
    # From the second frame on (the first has no period to go by yet), each frame goes when its
    # CAM_BACK_LEFT arrives, 35 ms after CAM_FRONT's stamp, 30 ms after CAM_FRONT arrived.
    for stamp_ns, now in released[1:]:
        assert now - (stamp_ns - T0) * 1e-9 == pytest.approx(0.034963 + 0.005, abs=1e-6)
    assert [stamp for stamp, _ in released] == [T0 + n * CAMERA_PERIOD_NS for n in range(len(released))]
    assert len(released) >= 5
    last = released[-1][0]
    views, notes = p.cameras.views("LIDAR_TOP", last, int(0.12e9), StandingStill(), "map")
    assert notes == [] and all(view.image is not None for view in views)
    for index, channel in enumerate(CAMERA_CHANNELS):  # each camera's image of the same sweep
        assert p.cameras.nearest(index, last, int(0.12e9)).stamp_ns == last + int(NUSCENES_FIRING_MS[channel] * 1e6)
