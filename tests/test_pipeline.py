"""The detector's pipeline without ROS: typed triggers in, boxes, maps, notes and stage times
out; the newest-trigger worker. No rclpy, no DDS, no messages."""
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.support.pipeline_rig import SECOND, T0, StandingStill, camera_frame, pipeline, settings, sweep
from vexkd_core.classes import MAP_CLASSES
from vexkd_core.data.sample import CAMERA_CHANNELS
from vexkd_core.data.sensor_files import reduce_image
from vexkd_core.data.sweeps import sweep_in_key_frame
from vexkd_core.geometry import make_transform
from vexkd_core.runtime.node_inputs import Calibration, CameraCache, CameraFrame, Sweep, SweepHistory
from vexkd_core.runtime.pipeline import MODEL_STAGES, Pipeline, Trigger
from vexkd_core.runtime.settings import DetectorSettings
from vexkd_core.runtime.worker import NewestWorker, TwoStageWorker

pytestmark = pytest.mark.unit


def lidar_run(p: Pipeline, key: Sweep, chosen: DetectorSettings):
    for past in (sweep(key.stamp_ns - SECOND // 10), sweep(key.stamp_ns - SECOND // 20)):
        assert p.add_sweep(past)[0] is not None
    kept, _ = p.add_sweep(key)
    return p.run(Trigger(kept.stamp_ns, kept.frame_id, kept), p.resolve(chosen))


def test_the_pipeline_imports_no_ros():
    code = "import sys, vexkd_core.runtime.pipeline, vexkd_core.runtime.trigger_gate, vexkd_core.runtime.worker; " \
           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'std_msgs', " \
           "'sensor_msgs', 'geometry_msgs', 'tf2_msgs', 'vision_msgs')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_lidar_trigger_gives_boxes_maps_and_stage_times_in_its_frame():
    result = lidar_run(pipeline(), sweep(T0), settings())
    assert (result.stamp_ns, result.frame_id, result.notes, result.skipped) == (T0, "LIDAR_TOP", [], False)
    assert len(result.boxes) > 0 and set(result.maps) == set(MAP_CLASSES)
    assert result.maps["divider"].shape == (result.grid.height, result.grid.width)
    assert set(result.stage_ms) == set(MODEL_STAGES) and all(ms > 0 for ms in result.stage_ms.values())


def test_thresholds_and_map_classes_come_from_the_settings():
    result = lidar_run(pipeline(), sweep(T0), settings(score_threshold=1.0, map_classes=("divider",)))
    assert len(result.boxes) == 0 and set(result.maps) == {"divider"}


def test_without_tf_every_note_is_kept():
    """The 'no transform' note and each past sweep left out: one line each, none overwritten."""
    result = lidar_run(pipeline(tf=StandingStill(known=())), sweep(T0), settings())
    assert result.notes[0].startswith("no transform map <- LIDAR_TOP")
    assert [n.startswith("past sweep left out") for n in result.notes[1:]] == [True, True]
    assert len(result.boxes) > 0  # the trigger sweep alone still makes a frame


class Driving(StandingStill):
    """The rig drives along x at 10 m/s, turning at 0.2 rad/s: a past sweep's points move."""

    def lookup_across_time(self, target, target_ns, source, source_ns, fixed):
        super().lookup_across_time(target, target_ns, source, source_ns, fixed)
        lag = (target_ns - source_ns) * 1e-9
        return make_transform([np.cos(-0.1 * lag), 0, 0, np.sin(-0.1 * lag)], [-10.0 * lag, 0.3 * lag, 0.0])


def test_the_node_assembles_sweeps_bitwise_as_the_dataset_reader_does():
    """Each sweep loses its ego returns once, on arrival; past ones are moved into the key frame
    each frame. The result is what the dataset reader's sweep_in_key_frame gives, key sweep first."""
    p = Pipeline.__new__(Pipeline)  # only the sweep history: no model needed
    p.sweeps = SweepHistory(2)
    received = []
    for k in range(3):
        raw = sweep(T0 + k * SECOND // 20).points
        raw[:40, :2] = np.random.default_rng(k).uniform(-0.7, 0.7, (40, 2))  # returns from the ego's roof
        raw[40:45, 0] = np.nan
        received.append(Sweep(T0 + k * SECOND // 20, "LIDAR_TOP", raw))
        kept, _ = p.add_sweep(received[-1])
        assert len(kept.points) <= len(raw) - 45 and (np.hypot(kept.points[:, 0], kept.points[:, 1]) >= 1.0).all()
    tf = Driving()
    got, notes = p.sweeps.points(kept, tf, "map")
    key = received[-1]
    expected = np.concatenate([sweep_in_key_frame(s.points, tf.lookup_across_time("LIDAR_TOP", key.stamp_ns, "LIDAR_TOP",
                                                                                  s.stamp_ns, "map"),
                                                  (key.stamp_ns - s.stamp_ns) * 1e-9) for s in reversed(received)])
    assert notes == [] and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert sorted(set(got[:, 4].tolist())) == pytest.approx([0.0, 0.05, 0.1])


def test_non_finite_points_are_counted_and_left_to_preprocess():
    clean = sweep(T0)
    polluted = Sweep(T0, "LIDAR_TOP", np.concatenate([clean.points, np.full((500, 4), np.nan, np.float32)]))
    p = pipeline()
    kept, notes = p.add_sweep(polluted)
    assert kept is not None and notes == ["500 of 3500 points are NaN/inf; they are dropped"]
    expected = lidar_run(pipeline(), clean, settings()).boxes
    got = lidar_run(pipeline(), polluted, settings()).boxes
    np.testing.assert_array_equal(got.center, expected.center)
    np.testing.assert_array_equal(got.score, expected.score)
    kept, notes = p.add_sweep(Sweep(T0 + SECOND, "LIDAR_TOP", np.full((10, 4), np.inf, np.float32)))
    assert kept is None and notes[-1] == "point cloud skipped: it has no (finite) points"


@pytest.mark.parametrize("tasks, objects, maps", [("map", False, True), ("detection", True, False)])
def test_a_single_task_model_outputs_only_its_task(tasks, objects, maps):
    p = pipeline(tasks=tasks)
    resolved = p.resolve(settings())
    assert p.detects == objects and resolved.publish_markers == objects and bool(resolved.map_classes) == maps
    result = lidar_run(p, sweep(T0), settings())
    assert (result.boxes is not None) == objects and bool(result.maps) == maps


def test_a_camera_trigger_uses_the_calibrated_cameras_and_names_the_missing_ones():
    p = pipeline("camera")
    k = np.array([[250.0, 0, 160.0], [0, 250.0, 90.0], [0, 0, 1]])
    skipped = p.run(Trigger(T0, CAMERA_CHANNELS[0], None), p.resolve(settings()))
    assert skipped.skipped and skipped.notes[0].startswith("camera frame skipped: camera 0 (CAM_FRONT) left out")
    for index in range(len(CAMERA_CHANNELS)):
        p.add_frame(index, camera_frame(index, T0 + index * 1_000_000))
        p.set_calibration(index, Calibration(k, 320, 180) if index != 3 else None)
    result = p.run(Trigger(T0, CAMERA_CHANNELS[0], None), p.resolve(settings()))
    assert not result.skipped and result.frame_id == "LIDAR_TOP"
    assert result.notes == ["camera 3 (CAM_BACK) left out: no valid CameraInfo received"]


def test_the_worker_takes_the_newest_trigger_and_counts_the_ones_it_dropped():
    """Deterministic on any machine: the handler is held while a burst of 50 arrives."""
    entered, go, last, handled = threading.Event(), threading.Event(), threading.Event(), []

    def handle(item: int) -> None:
        handled.append(item)
        entered.set()
        go.wait(10)
        if item == 50:
            last.set()

    worker = NewestWorker(handle, "test-worker")
    try:
        worker.offer(0)
        worker.release()
        assert entered.wait(10)
        for item in range(1, 51):
            worker.offer(item)
        worker.release()
        go.set()
        assert last.wait(10)
        assert handled == [0, 50] and worker.offered == 51 and worker.dropped == 49
    finally:
        go.set()
        worker.stop()


def test_the_two_stage_worker_prepares_the_next_item_while_it_finishes_one():
    """The second item is prepared while the first is held in finish(); while both stages are
    held, a burst keeps only its newest in each; an item prepare() turns into None stops there."""
    finishing_first, release_finish = threading.Event(), threading.Event()
    prepared_second, prepared_nothing, done = threading.Event(), threading.Event(), threading.Event()
    finished = []

    def prepare(item: int) -> int | None:
        if item == 2:
            prepared_second.set()
        if item == 99:
            prepared_nothing.set()
            return None
        return item * 10

    def finish(item: int) -> None:
        finished.append(item)
        if item == 10:
            finishing_first.set()
            release_finish.wait(10)
        if item == 500:
            done.set()

    worker = TwoStageWorker(prepare, finish, "test-two-stage")
    try:
        worker.offer(1)
        worker.release()
        assert finishing_first.wait(10)
        worker.offer(2)
        worker.release()
        assert prepared_second.wait(10)  # prepared while item 1 is still being finished
        for item in (3, 4, 99):  # 3 and 4 prepared or dropped as they come; 99 prepares to nothing
            worker.offer(item)
            worker.release()
        assert prepared_nothing.wait(10)
        worker.offer(50)
        worker.release()
        release_finish.set()
        assert done.wait(10)
        assert finished[0] == 10 and finished[-1] == 500 and 990 not in finished
        assert finished == sorted(finished)  # never out of order
        assert worker.offered == 6 and worker.dropped == 6 - len(finished) - 1  # 99 was taken, not dropped
    finally:
        release_finish.set()
        worker.stop()
    assert not worker.preparing._thread.is_alive() and not worker.finishing._thread.is_alive()


@pytest.mark.parametrize("encoded", [True, False])
def test_a_nuscenes_camera_is_decoded_as_the_dataset_reader_decodes_it(encoded):
    """A 1600x900 camera for a 704-wide model input: decoded at 1/2 with K scaled to match,
    the same pixels (JPEG) the training reader gets from the same bytes, or the raw image
    reduced alike."""
    import cv2

    from vexkd_core.data.sensor_files import decode_image, reduced_intrinsics

    rng = np.random.default_rng(0)
    full = cv2.GaussianBlur(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = np.frombuffer(cv2.imencode(".jpg", full)[1].tobytes(), np.uint8)
    decode = (lambda reduction: decode_image(jpeg, reduction)) if encoded else \
        (lambda reduction: reduce_image(full, reduction))
    k = np.array([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    cache = CameraCache(input_width=704)
    for index, channel in enumerate(CAMERA_CHANNELS):
        cache.add_frame(index, CameraFrame(T0, channel, (1600, 900), decode))
        cache.set_calibration(index, Calibration(k, 1600, 900))
    views, notes = cache.views("LIDAR_TOP", T0, 10**8, StandingStill(), "map")
    assert notes == []
    expected = decode_image(jpeg, 2) if encoded else cv2.resize(full, (800, 450), interpolation=cv2.INTER_AREA)
    for view in views:
        assert view.image.shape == (450, 800, 3) and np.array_equal(view.image, expected)
        assert np.allclose(view.intrinsics, reduced_intrinsics(k, 2))
