"""Data memory bounded by a constant: the byte-budgeted sample cache, reduced JPEG decoding
that keeps the camera geometry, and the one decode / point-file reader shared with ROS."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from std_msgs.msg import Header

from vexkd_core.config import override, preset
from vexkd_core.data.dataset import TrainingSet, model_source
from vexkd_core.data.preprocess import preprocess
from vexkd_core.data.sample import CAMERA_CHANNELS, CameraView, Sample
from vexkd_core.data.sample_cache import SampleCache, sample_nbytes
from vexkd_core.data.sensor_files import (DatasetError, decode_reduction, read_image, read_points,
                                          reduced_intrinsics)
from vexkd_core.io import atomic_npz
from vexkd_ros.conversions import compressed_to_rgb, encoded_to_compressed

pytestmark = pytest.mark.unit


def points_sample(rows: int, token: str = "s") -> Sample:
    cameras = [CameraView(channel, np.zeros((18, 32, 3), np.uint8), np.diag([20.0, 20.0, 1.0]), np.eye(4))
               for channel in CAMERA_CHANNELS]
    return Sample(token, 0, np.zeros((rows, 5), np.float32), cameras, np.eye(4))


def test_cache_never_holds_more_than_its_budget_and_evicts_the_least_recently_used():
    size = sample_nbytes(points_sample(1000))
    cache = SampleCache(int(2.5 * size))
    cache.put(0, points_sample(1000))
    cache.put(1, points_sample(1000))
    assert cache.get(0) is not None  # 0 is now more recent than 1
    cache.put(2, points_sample(1000))
    assert cache.get(1) is None and cache.get(0) is not None and cache.get(2) is not None
    assert cache.nbytes == 2 * size <= cache.budget_bytes
    cache.put(3, points_sample(10_000))  # larger than the whole budget: not kept, nothing evicted
    assert cache.get(3) is None and len(cache) == 2
    for index in range(4, 40):
        cache.put(index, points_sample(int(np.random.default_rng(index).integers(10, 2000))))
        assert cache.nbytes <= cache.budget_bytes
        assert cache.nbytes == sum(sample_nbytes(cache.get(i)) for i in list(cache._samples))


def test_a_cached_sample_cannot_be_written_into():
    cache = SampleCache(10 * 2**20)
    cache.put(0, points_sample(10))
    with pytest.raises(ValueError):
        cache.get(0).points[0, 0] = 1.0


class CountingSource:
    """A source of small samples that counts its reads."""

    def __init__(self, size: int):
        self.size, self.reads = size, 0

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> Sample:
        self.reads += 1
        return points_sample(100 + index, token=str(index))


@pytest.mark.parametrize("cache_mb, reads", [(0, 3 * 4), (1, 4)])
def test_training_set_keeps_nothing_without_a_cache_and_reads_once_with_one(cache_mb, reads):
    config = override(preset("tiny"), {"train.sample_cache_mb": cache_mb})
    source = CountingSource(4)
    dataset = TrainingSet(source, config, augment=False)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            dataset[index]
    assert source.reads == reads
    assert len(dataset._cache) == (0 if cache_mb == 0 else 4)


def test_presets_bound_the_cache():
    assert preset("nuscenes").train.sample_cache_mb == 0
    assert 0 < preset("tiny").train.sample_cache_mb <= 512


@pytest.mark.parametrize("image_width, input_width, reduction", [
    (1600, 704, 2), (1600, 352, 4), (1600, 200, 8), (1600, 900, 1), (480, 256, 1), (1600, 0, 1)])
def test_reduction_keeps_the_image_at_least_as_wide_as_the_input(image_width, input_width, reduction):
    assert decode_reduction(image_width, input_width) == reduction


# A full-resolution camera with an off-centre principal point, and a point it sees low and
# right of the centre (inside the crop the nuscenes preset keeps).
K = np.array([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
POINT = np.array([1.453, 0.861, 10.0])


def blob_jpeg(path: Path, sigma_px: float) -> None:
    """A white Gaussian blob on black where POINT projects in the 1600x900 image."""
    u, v = (K @ POINT)[:2] / POINT[2]
    xs, ys = np.meshgrid(np.arange(1600), np.arange(900))
    blob = 255 * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma_px ** 2))
    cv2.imwrite(str(path), np.repeat(blob[..., None], 3, axis=2).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 98])


def input_pixel_and_centroid(image: np.ndarray, intrinsics: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """Where the model is told POINT lands in its input (image_transform @ K, as the camera
    encoder projects), and where the blob's pixels actually are in that input."""
    view = CameraView("CAM_FRONT", image, intrinsics, np.eye(4))
    inputs, _ = preprocess(Sample("t", 0, np.zeros((0, 5), np.float32), [view], np.eye(4)), config)
    projected = inputs.image_transform[0].double().numpy() @ inputs.intrinsics[0].double().numpy() @ POINT
    pixels = inputs.images[0, 0].numpy() * 0.229 * 255 + 0.485 * 255
    weight = np.where(pixels > 20, pixels, 0.0)
    rows, cols = np.indices(weight.shape)
    centroid = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
    return projected[:2] / projected[2], centroid


@pytest.mark.parametrize("input_width, input_height", [(704, 256), (352, 128), (200, 64)])
def test_reduced_decoding_lands_a_point_on_the_same_input_pixel(tmp_path, input_width, input_height):
    config = override(preset("nuscenes"), {"model.camera.input_width": input_width,
                                           "model.camera.input_height": input_height})
    path = tmp_path / "blob.jpg"
    blob_jpeg(path, sigma_px=12.0)
    reduction = decode_reduction(1600, input_width)
    assert reduction > 1
    full, full_centroid = input_pixel_and_centroid(read_image(path), K, config)
    reduced_image = read_image(path, reduction)
    assert reduced_image.shape[:2] == (-(-900 // reduction), 1600 // reduction)
    reduced, reduced_centroid = input_pixel_and_centroid(reduced_image, reduced_intrinsics(K, reduction), config)
    assert np.abs(reduced - full).max() < 1.0  # the geometry the model is given
    # ... agrees with where the pixels really are, to the half-pixel shift of a reduced pixel's centre
    assert np.abs(full_centroid - full).max() < 0.1
    assert np.abs(reduced_centroid - reduced).max() < 0.1


def test_ros_and_dataset_decode_a_jpeg_to_the_same_pixels(tiny_world):
    dataroot, world = tiny_world
    width = world.image_size[0]
    config = override(preset("tiny"), {"model.camera.input_width": width // 2, "model.camera.input_height": 48})
    source = model_source(dataroot, world.version, "train", config, False)
    sample = source.sample(0)
    record = source.nusc.get("sample_data", source.nusc.get("sample", sample.token)["data"]["CAM_FRONT"])
    encoded = (Path(dataroot) / record["filename"]).read_bytes()
    view = sample.cameras[CAMERA_CHANNELS.index("CAM_FRONT")]
    ros = compressed_to_rgb(encoded_to_compressed(encoded, Header()), reduction=2)
    np.testing.assert_array_equal(view.image, ros)
    assert view.image.shape[1] == width // 2
    calibration = source.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    np.testing.assert_allclose(view.intrinsics, reduced_intrinsics(np.asarray(calibration["camera_intrinsic"]), 2))
    np.testing.assert_array_equal(compressed_to_rgb(encoded_to_compressed(encoded, Header())),
                                  read_image(Path(dataroot) / record["filename"]))


def test_bad_sensor_files_are_one_line_dataset_errors(tmp_path):
    (tmp_path / "seven.pcd.bin").write_bytes(np.zeros(7, np.float32).tobytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for read, name in ((read_points, "seven.pcd.bin"), (read_points, "missing.pcd.bin"), (read_image, "broken.jpg"),
                       (read_image, "missing.jpg")):
        with pytest.raises(DatasetError) as error:
            read(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "two.pcd.bin").write_bytes(np.arange(10, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(read_points(tmp_path / "two.pcd.bin"), np.arange(10).reshape(2, 5))


def test_an_npz_written_array_by_array_reads_back_and_appears_only_when_complete(tmp_path):
    arrays = {"token/detection/low": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.ones((2, 2, 2), bool)}
    with atomic_npz(tmp_path / "masks.npz") as add:
        for name, array in arrays.items():
            add(name, array)
            assert not (tmp_path / "masks.npz").exists()
    with np.load(tmp_path / "masks.npz") as loaded:
        assert set(loaded.files) == set(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)
            assert loaded[name].dtype == array.dtype
    with pytest.raises(RuntimeError), atomic_npz(tmp_path / "broken.npz") as add:
        add("a", np.zeros(3))
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.npz"]
