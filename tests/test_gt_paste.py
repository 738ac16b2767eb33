"""The LiDAR recipe of mmdet3d/BEVFusion on nuScenes: the GT database, GT-paste and CBGS."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from nuscenes.eval.detection.utils import category_to_detection_name

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.data.cbgs import balanced_indices, sample_classes
from vexkd_core.data.gt_database import MIN_POINTS, GTDatabase, lidar_sample, write_database
from vexkd_core.data.gt_paste import GTPaster, training_paster
from vexkd_core.data.nuscenes_source import DatasetError, NuScenesSource
from vexkd_core.data.sample import Sample

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent
SWEEPS = 1


def footprint(boxes, index: int) -> shapely.Polygon:
    return shapely.Polygon(boxes.corners()[index, :4, :2])


def inside(points: np.ndarray, boxes, index: int) -> np.ndarray:
    """Points in a box by shapely's BEV polygon and the box's z range (not the code under test)."""
    polygon = footprint(boxes, index)
    z, half = boxes.center[index, 2], boxes.size_lwh[index, 2] / 2
    return shapely.contains_xy(polygon, points[:, 0], points[:, 1]) & (np.abs(points[:, 2] - z) <= half)


@pytest.fixture(scope="module")
def train_source(tiny_world):
    dataroot, world = tiny_world
    return NuScenesSource(dataroot, world.version, "train", SWEEPS)


@pytest.fixture(scope="module")
def database(train_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("gt") / "database"
    write_database(train_source, root, progress=False)
    return GTDatabase.load(root)


def test_the_database_holds_each_objects_points_in_its_box_frame(train_source, database):
    expected = []
    for token in train_source.tokens:
        points, boxes = lidar_sample(train_source, token)
        expected += [(token, int(inside(points, boxes, i).sum())) for i in range(len(boxes))
                     if inside(points, boxes, i).sum() >= MIN_POINTS]
    assert len(database) > 0 and len(database) == len(expected)
    assert list(zip(database.tokens[database.samples].tolist(), database.counts.tolist())) == expected
    for index in range(len(database)):
        local = database.points(index)
        assert local.shape == (database.counts[index], 5)
        assert np.all(np.abs(local[:, :3]) <= database.boxes.size_lwh[index] / 2 + 1e-4)
    assert (database.version, database.split, database.sweeps) == (train_source.nusc.version, "train", SWEEPS)


def test_pasted_objects_overlap_nothing_and_bring_only_their_points(tiny_world, database):
    dataroot, world = tiny_world
    val = NuScenesSource(dataroot, world.version, "val", SWEEPS)  # other places: fewer clashes, more pastes
    paster = GTPaster(database, until_epoch=1)
    pasted_total = 0
    for index, token in enumerate(val.tokens):
        points, boxes = lidar_sample(val, token)
        sample = Sample(token, 0, points, [], np.eye(4), boxes)
        result = paster.paste(sample, np.random.default_rng([0, index]))
        new = result.boxes.select(np.arange(len(boxes), len(result.boxes)))
        pasted_total += len(new)
        assert np.array_equal(sample.points, points) and len(sample.boxes) == len(boxes)  # the input is kept
        polygons = [footprint(result.boxes, i) for i in range(len(result.boxes))]
        for i in range(len(boxes), len(result.boxes)):
            for j in range(i):
                assert polygons[i].intersection(polygons[j]).area < 1e-6, (token, i, j)
        chosen = paster.choose(boxes, np.random.default_rng([0, index]))  # the same draw as paste's
        assert np.allclose(database.boxes.center[chosen], new.center)
        in_new = np.zeros(len(points), bool)
        for i in range(len(new)):
            in_new |= inside(points, new, i)
        pasted_rows = int(database.counts[chosen].sum())
        assert len(result.points) == pasted_rows + int((~in_new).sum())
        assert np.allclose(result.points[pasted_rows:], points[~in_new])  # the sample's own points inside are gone
        for i in range(len(new)):  # each pasted box holds exactly its database points
            assert int(inside(result.points, new, i).sum()) == database.counts[chosen[i]]
            assert inside(result.points[:pasted_rows], new, i).sum() == database.counts[chosen[i]]
    assert pasted_total > 0


def test_paste_is_for_lidar_models_and_needs_its_database(train_source, database, tmp_path):
    from vexkd_core.config import load_config

    config = load_config("tiny", ["augment.gt_paste=true", f"model.lidar.sweeps={SWEEPS}",
                                  f"augment.gt_database={database.root}", "augment.gt_paste_stop_epochs=2"])
    assert training_paster(config, train_source, reads_lidar=False, epochs=5) is None
    paster = training_paster(config, train_source, reads_lidar=True, epochs=5)
    assert paster.active(2) and not paster.active(3)
    missing = load_config("tiny", ["augment.gt_paste=true", f"augment.gt_database={tmp_path / 'none'}"])
    with pytest.raises(DatasetError, match="augment.gt_paste is on but there is no GT database at .* --sweeps 3"):
        training_paster(missing, train_source, reads_lidar=True, epochs=5)
    other_sweeps = load_config("tiny", ["augment.gt_paste=true", f"augment.gt_database={database.root}"])
    with pytest.raises(DatasetError, match="rebuild it"):
        training_paster(other_sweeps, train_source, reads_lidar=True, epochs=5)
    assert load_config("nuscenes").augment.gt_paste and load_config("nuscenes").train.cbgs
    assert not load_config("tiny").augment.gt_paste and not load_config("tiny").train.cbgs


def table_classes(nusc, tokens) -> list[set[int]]:
    """Classes of each sample straight from the tables, as the nuScenes evaluation counts boxes."""
    classes = []
    for token in tokens:
        labels = set()
        for annotation in (nusc.get("sample_annotation", a) for a in nusc.get("sample", token)["anns"]):
            name = category_to_detection_name(annotation["category_name"])
            if name is not None and annotation["num_lidar_pts"] + annotation["num_radar_pts"] > 0:
                labels.add(DETECTION_CLASSES.index(name))
        classes.append(labels)
    return classes


def test_cbgs_gives_each_class_its_share(tiny_world):
    dataroot, world = tiny_world
    source = NuScenesSource(dataroot, world.version, None, 0)
    classes = table_classes(source.nusc, source.tokens)
    assert sample_classes(source) == classes
    per_class = [[i for i, labels in enumerate(classes) if c in labels] for c in range(len(DETECTION_CLASSES))]
    total = sum(len(s) for s in per_class)
    expected = [int(len(s) * (0.1 / (len(s) / total))) if s else 0 for s in per_class]
    indices = balanced_indices(classes, len(DETECTION_CLASSES), seed=3)
    assert len(indices) == sum(expected)
    start = 0
    for label, count in enumerate(expected):  # one block per class, drawn from that class's samples
        assert all(label in classes[i] for i in indices[start:start + count])
        start += count
    assert np.array_equal(indices, balanced_indices(classes, len(DETECTION_CLASSES), seed=3))
    assert not np.array_equal(indices, balanced_indices(classes, len(DETECTION_CLASSES), seed=4))


def test_cbgs_by_hand():
    # D = 3 + 1 + 1 = 5 sample-class pairs over 3 classes: class 0 gets int(3 * (1/3) / (3/5)) = 1,
    # classes 1 and 2 get int(1 * (1/3) / (1/5)) = 1 each; the empty sample drops out.
    classes = [{0}, {0}, {0, 1}, {2}, set()]
    indices = balanced_indices(classes, 3, seed=0)
    assert len(indices) == 3 and indices[0] in (0, 1, 2) and indices[1] == 2 and indices[2] == 3


def test_a_resumed_epoch_sees_the_same_resampled_pasted_items(tiny_world, database):
    """Resume restarts the sampler mid-epoch over the CBGS-resampled size; the items it then
    reads must be those an uninterrupted run reads: order and pasting from (seed, epoch, position)."""
    from vexkd_core.config import load_config
    from vexkd_core.data.dataset import EpochSampler, TrainingSet, map_source_grid

    dataroot, world = tiny_world
    config = load_config("tiny", [f"model.lidar.sweeps={SWEEPS}", "train.cbgs=true", "augment.gt_paste=true",
                                  f"augment.gt_database={database.root}"])

    def dataset():
        source = NuScenesSource(dataroot, world.version, "train", SWEEPS, map_source_grid(config, True))
        indices = balanced_indices(sample_classes(source), len(DETECTION_CLASSES), config.train.seed)
        items = TrainingSet(source, config, True, indices, training_paster(config, source, True, epochs=3))
        items.set_epoch(1)
        return items

    straight, resumed = dataset(), dataset()
    assert len(straight) != len(straight.source)  # resampled
    sampler = EpochSampler(len(straight), 2, config.train.seed)
    sampler.set_epoch(1)
    order = list(sampler)
    sampler.set_epoch(1, skip_batches=1)
    assert list(sampler) == order[2:]
    for position in order[2:]:
        (a, a_targets), (b, b_targets) = straight[position], resumed[position]
        assert torch.equal(a.points, b.points) and np.array_equal(a_targets.boxes.center, b_targets.boxes.center)
    unpasted = TrainingSet(straight.source, config, True, straight.indices)
    unpasted.set_epoch(1)
    assert sum(len(straight[p][1].boxes) for p in order) > sum(len(unpasted[p][1].boxes) for p in order)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-data"), "gt-database", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_cli_writes_then_refuses_what_it_did_not_write(tiny_world, tmp_path):
    dataroot, world = tiny_world
    common = ["--dataroot", str(dataroot), "--version", world.version, "--sweeps", str(SWEEPS)]
    out = tmp_path / "db"
    result = run_cli(*common, "--out", str(out))
    assert result.returncode == 0 and "objects" in result.stdout, result.stderr
    assert json.loads((out / "index.json").read_text())["split"] == "train"
    again = run_cli(*common, "--out", str(out))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    assert run_cli(*common, "--out", str(out), "--overwrite").returncode == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    for overwrite in ([], ["--overwrite"]):
        result = run_cli(*common, "--out", str(foreign), *overwrite)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "did not write" in result.stderr
    assert (foreign / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "foreign"]  # no partial folder left


@pytest.mark.parametrize("args, message", [
    (["--dataroot", "/nonexistent/world"], "does not exist"),
    (["--dataroot", "{dataroot}", "--version", "{version}", "--split", "nosuch"], "split 'nosuch'"),
])
def test_cli_errors_are_one_line(tiny_world, tmp_path, args, message):
    dataroot, world = tiny_world
    args = [a.format(dataroot=dataroot, version=world.version) for a in args]
    result = run_cli(*args, "--out", str(tmp_path / "db"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
