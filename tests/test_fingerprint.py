"""dataset_identity: the same while a dataset stays as it is (wherever it lies), new when it is
rewritten; large tables known by size and mtime, not read."""
import json
import os
import shutil

import pytest

from vexkd_core import fingerprint
from vexkd_core.fingerprint import dataset_identity, file_stamp

pytestmark = pytest.mark.unit


def _world(root, samples, version="v-test"):
    (root / version).mkdir(parents=True, exist_ok=True)
    (root / version / "sample.json").write_text(json.dumps(samples))
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "expansion" / "town.json").write_text("{}")
    (root / "samples" / "CAM_FRONT").mkdir(parents=True, exist_ok=True)
    return root


def test_identity_is_of_the_contents_not_the_place(tmp_path):
    world = _world(tmp_path / "world", ["a"])
    identity = dataset_identity(world, "v-test")
    assert dataset_identity(world, "v-test") == identity
    shutil.copytree(world, tmp_path / "copy")  # copy2 keeps mtimes
    assert dataset_identity(tmp_path / "copy", "v-test") == identity
    assert dataset_identity(world, "v-other") != identity


def test_identity_changes_with_tables_maps_markers_and_sensor_folders(tmp_path):
    world = _world(tmp_path / "world", ["a"])
    seen = {dataset_identity(world, "v-test")}
    (world / "v-test" / "sample.json").write_text(json.dumps(["b"]))  # same size, other contents
    seen.add(dataset_identity(world, "v-test"))
    (world / "maps" / "expansion" / "town.json").write_text('{"lane": []}')
    seen.add(dataset_identity(world, "v-test"))
    (world / ".vexkd-synthetic.json").write_text('{"write_id": "1"}')  # a writer's marker at the top
    seen.add(dataset_identity(world, "v-test"))
    folder = world / "samples" / "CAM_FRONT"
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns + 1_000_000))  # files came or went
    seen.add(dataset_identity(world, "v-test"))
    assert len(seen) == 5


def test_a_large_table_is_known_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "WHOLE_HASH_LIMIT", 4)
    world = _world(tmp_path / "world", ["a"])
    table = world / "v-test" / "sample.json"
    identity, times = dataset_identity(world, "v-test"), (table.stat().st_atime_ns, table.stat().st_mtime_ns)
    table.write_text(json.dumps(["b"]))
    os.utime(table, ns=times)
    assert dataset_identity(world, "v-test") == identity  # not read: the documented trade-off
    os.utime(table, ns=(times[0], times[1] + 1_000_000))
    assert dataset_identity(world, "v-test") != identity


def test_file_stamp_of_a_file_a_folder_and_a_missing_file(tmp_path):
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "metadata.yaml").write_text("x")
    assert file_stamp(tmp_path / "bag" / "metadata.yaml", tmp_path)[:2] == ["bag/metadata.yaml", 1]
    assert file_stamp(tmp_path / "bag", tmp_path)[1][0][:2] == ["metadata.yaml", 1]
    assert file_stamp(tmp_path / "gone.pt", tmp_path) == ["gone.pt", "missing"]
