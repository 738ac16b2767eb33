"""What a node makes of camera input before the model sees it: a CameraInfo the model could
not invert leaves its camera out, and an image whose header claims the wrong size is left
out before it is decoded."""
import time

import cv2
import numpy as np
import pytest
from std_msgs.msg import Header

from tests.support import ros_samples
from vexkd_core.runtime.node_inputs import Calibration, CameraCache
from vexkd_ros.conversions import (MessageError, camera_info_to_intrinsics, encoded_to_compressed,
                                   intrinsics_to_camera_info, ns_to_stamp)
from vexkd_ros.detector_node import camera_frame
from vexkd_ros.tf_buffer import TransformBuffer

pytestmark = pytest.mark.unit

STAMP_NS = 1_533_151_603_547_590_000
K = np.array([[250.0, 0, 160.0], [0, 250.0, 90.0], [0, 0, 1]])


def header() -> Header:
    return Header(stamp=ns_to_stamp(STAMP_NS), frame_id="CAM_FRONT")


def front_note(cameras: CameraCache) -> str:
    _, notes = cameras.views("LIDAR_TOP", STAMP_NS, 0, TransformBuffer(), "map")
    return notes[0]


def test_a_jpeg_claiming_another_size_is_left_out_before_decoding():
    cameras = CameraCache()
    cameras.set_calibration(0, Calibration(K, 320, 180))
    cameras.add_frame(0, camera_frame(encoded_to_compressed(ros_samples.forged_jpeg(20000, 20000), header())))
    started = time.perf_counter()
    note = front_note(cameras)
    assert time.perf_counter() - started < 0.5  # decoding 20000x20000 takes ~10 s
    assert note == "camera 0 (CAM_FRONT) left out: image is 20000x20000 but its CameraInfo says 320x180"


def test_a_camera_info_the_model_cannot_invert_leaves_its_camera_out():
    cameras = CameraCache()
    cameras.set_calibration(0, Calibration(K, 320, 180))
    singular = K.copy()
    singular[2, 2] = 0.0
    with pytest.raises(MessageError, match="not an invertible pinhole matrix"):
        camera_info_to_intrinsics(intrinsics_to_camera_info(singular, 320, 180, header()))
    cameras.set_calibration(0, None)  # what the node files for a refused CameraInfo
    jpeg = cv2.imencode(".jpg", np.zeros((180, 320, 3), np.uint8))[1].tobytes()
    cameras.add_frame(0, camera_frame(encoded_to_compressed(jpeg, header())))
    assert front_note(cameras).endswith("no valid CameraInfo received")
