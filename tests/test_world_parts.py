"""A world's val split scored in parts of whole scenes from one evaluation (vexkd_train.world_parts):
one part is the whole split's figures exactly; parts cover every sample once, never split a
scene."""
import json

import numpy as np
import pytest

from vexkd_train.evaluate import MAP_COUNTS, evaluate
from vexkd_train.world_parts import part_metrics, scene_parts

pytestmark = pytest.mark.slow  # a trained student


@pytest.fixture(scope="module")
def evaluated(trained_lidar, tiny_world, tmp_path_factory):
    """The tiny world's val split evaluated by a trained multi-task LiDAR student."""
    out = tmp_path_factory.mktemp("evaluated")
    return out, evaluate(trained_lidar, tiny_world[0], tiny_world[1].version, "val", out, progress=False)


def test_one_part_is_the_whole_split(evaluated, tiny_nusc):
    out, whole = evaluated
    assert whole["detection"]["mAP"] > 0 and whole["map"]["mIoU"] > 0
    (part,) = part_metrics(out, tiny_nusc, "val", parts=1)
    assert part["samples"] == whole["samples"]
    assert part["detection"] == whole["detection"]
    assert part["map"] == whole["map"]


def test_parts_are_whole_scenes_and_cover_the_split(evaluated, tiny_nusc, tiny_world):
    out, whole = evaluated
    tokens = np.load(out / MAP_COUNTS)["tokens"].tolist()
    groups = scene_parts(tiny_nusc, tokens, tiny_world[1].val_scenes)
    assert sorted(token for group in groups for token in group) == sorted(tokens)
    scenes = [{tiny_nusc.get("sample", token)["scene_token"] for token in group} for group in groups]
    assert all(len(found) == 1 for found in scenes) and len(set.union(*scenes)) == len(groups)
    parts = part_metrics(out, tiny_nusc, "val", parts=len(groups))
    assert [part["samples"] for part in parts] == [len(group) for group in groups]
    counts = np.load(out / MAP_COUNTS)  # per sample, class and threshold
    assert counts["intersection"].shape == counts["union"].shape == (whole["samples"], 6, 7)
    assert (counts["intersection"] <= counts["union"]).all()
    with pytest.raises(ValueError, match="cannot be cut"):
        scene_parts(tiny_nusc, tokens, len(groups) + 1)


def test_a_split_without_detections_scores_zero_in_every_part(tiny_nusc, tiny_world, tmp_path):
    """The devkit cannot evaluate an empty set: evaluate() scores it 0 without it, and so does
    each part (the devkit is not run on the parts either)."""
    from vexkd_train.evaluate import detection_metrics

    nothing = detection_metrics(tiny_nusc, {}, "val", tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"detection": nothing, "map": None}))
    parts = part_metrics(tmp_path, tiny_nusc, "val", parts=2)
    assert [part["detection"]["mAP"] for part in parts] == [0.0, 0.0] and not (tmp_path / "devkit").exists()
    assert sum(part["samples"] for part in parts) == tiny_world[1].val_scenes * tiny_world[1].samples_per_scene
