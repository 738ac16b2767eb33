"""The synthetic world is a real nuScenes-schema dataset: the official devkit reads it,
evaluates it, rasterises its map, and agrees with it on points, projections and timing."""
import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, view_points
from pyquaternion import Quaternion

from vexkd_core.classes import DETECTION_CLASSES
from vexkd_core.data.synthetic import SynthConfig, write_dataset
from vexkd_core.data.synthetic.rig import CAMERA_CHANNELS
from vexkd_core.data.synthetic.scene_writer import make_token, render_camera, setup_scene
from vexkd_core.data.synthetic.writer import MARKER, _city, scene_jobs

pytestmark = pytest.mark.unit

CHANNELS = ("LIDAR_TOP",) + CAMERA_CHANNELS


def test_every_sample_has_all_sensors_with_files_poses_and_chains(tiny_nusc, tiny_world):
    dataroot, config = tiny_world
    assert len(tiny_nusc.scene) == 3 and len(tiny_nusc.sample) == 3 * config.samples_per_scene
    for sample in tiny_nusc.sample:
        assert set(sample["data"]) == set(CHANNELS)
    by_channel = {}
    for record in tiny_nusc.sample_data:
        by_channel.setdefault((record["channel"], record["sample_token"]), []).append(record)
        tiny_nusc.get("ego_pose", record["ego_pose_token"])
        path = dataroot / record["filename"]
        assert path.is_file(), path
        if record["channel"] == "LIDAR_TOP":
            points = np.fromfile(path, dtype=np.float32)
            assert points.size % 5 == 0 and points.size > 5 * 5000
        else:
            assert (record["width"], record["height"]) == config.image_size
    for record in tiny_nusc.sample_data:  # prev/next link the channel's frames in time
        if record["next"]:
            following = tiny_nusc.get("sample_data", record["next"])
            assert following["prev"] == record["token"] and following["channel"] == record["channel"]
            assert following["timestamp"] > record["timestamp"]


def test_sensor_rates_match_nuscenes(tiny_nusc):
    scene = tiny_nusc.scene[0]
    last = tiny_nusc.get("sample", scene["last_sample_token"])
    gaps = {}
    for channel in ("LIDAR_TOP", "CAM_FRONT"):
        record = tiny_nusc.get("sample_data", last["data"][channel])
        while record["prev"]:
            previous = tiny_nusc.get("sample_data", record["prev"])
            gaps.setdefault(channel, set()).add(record["timestamp"] - previous["timestamp"])
            record = previous
    assert 50_000 in gaps["LIDAR_TOP"]  # 20 Hz sweeps
    assert min(gaps["CAM_FRONT"]) in (83_333, 83_334)  # 12 Hz
    first = tiny_nusc.get("sample", scene["first_sample_token"])
    assert tiny_nusc.get("sample", first["next"])["timestamp"] - first["timestamp"] == 500_000  # 2 Hz


def test_ground_truth_as_predictions_scores_one(tiny_nusc, tmp_path):
    val = set(json.loads((Path(tiny_nusc.dataroot) / tiny_nusc.version / "splits.json").read_text())["val"])
    attributes = {a["token"]: a["name"] for a in tiny_nusc.attribute}
    results = {}
    for sample in tiny_nusc.sample:
        if tiny_nusc.get("scene", sample["scene_token"])["name"] not in val:
            continue
        results[sample["token"]] = []
        for token in sample["anns"]:
            annotation = tiny_nusc.get("sample_annotation", token)
            name = category_to_detection_name(annotation["category_name"])
            if name is None or annotation["num_lidar_pts"] == 0:
                continue  # the devkit drops such GT boxes; as predictions they would be false positives
            results[sample["token"]].append({
                "sample_token": sample["token"], "translation": annotation["translation"],
                "size": annotation["size"], "rotation": annotation["rotation"],
                "velocity": list(tiny_nusc.box_velocity(token)[:2]), "detection_name": name,
                "detection_score": 1.0,
                "attribute_name": attributes[annotation["attribute_tokens"][0]] if annotation["attribute_tokens"] else ""})
    result_path = tmp_path / "results.json"
    result_path.write_text(json.dumps({"meta": {"use_camera": False, "use_lidar": True, "use_radar": False,
                                                "use_map": False, "use_external": False}, "results": results}))
    evaluation = DetectionEval(tiny_nusc, config_factory("detection_cvpr_2019"), str(result_path), "val",
                               str(tmp_path / "eval"), verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics, _ = evaluation.evaluate()
    summary = metrics.serialize()
    assert set(summary["mean_dist_aps"]) == set(DETECTION_CLASSES)
    assert summary["mean_ap"] == pytest.approx(1.0) and summary["nd_score"] == pytest.approx(1.0)


def test_map_rasterises_all_six_classes_around_the_ego(tiny_nusc):
    layers = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider")
    seen = dict.fromkeys(layers, 0)
    maps = {}
    for scene in tiny_nusc.scene:
        location = tiny_nusc.get("log", scene["log_token"])["location"]
        nusc_map = maps.setdefault(location, NuScenesMap(tiny_nusc.dataroot, location))
        sample = tiny_nusc.get("sample", scene["first_sample_token"])
        pose = tiny_nusc.get("ego_pose", tiny_nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        yaw = np.degrees(Quaternion(pose["rotation"]).yaw_pitch_roll[0])
        masks = nusc_map.get_map_mask((pose["translation"][0], pose["translation"][1], 100, 100), yaw,
                                      list(layers), (200, 200))
        for layer, mask in zip(layers, masks):
            seen[layer] += int(mask.any())
        # The road around every ego has lanes, markings, crossings and walkways.
        assert all(mask.any() for layer, mask in zip(layers, masks) if layer != "carpark_area"), location
    assert seen["carpark_area"] > 0


def test_devkit_points_in_box_equals_num_lidar_pts(tiny_nusc):
    checked = with_points = 0
    for sample in tiny_nusc.sample[::3]:
        path, boxes, _ = tiny_nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        cloud = LidarPointCloud.from_file(path)
        for box in boxes:
            expected = tiny_nusc.get("sample_annotation", box.token)["num_lidar_pts"]
            assert int(points_in_box(box, cloud.points[:3]).sum()) == expected
            checked += 1
            with_points += expected > 0
    assert checked > 100 and with_points > 30


def test_far_objects_are_seen_by_cameras_with_few_lidar_points(tiny_nusc):
    sparse_but_visible = [a for a in tiny_nusc.sample_annotation
                          if a["num_lidar_pts"] <= 2 and a["visibility_token"] in ("3", "4")]
    assert len(sparse_but_visible) > 10


def test_devkit_projection_lands_on_the_rendered_object(tiny_nusc, tiny_world):
    dataroot, config = tiny_world
    jobs = scene_jobs(config)
    hits = total = 0
    for job in jobs[1:]:  # the val scenes
        city = _city(job.location, job.seed)
        setup = setup_scene(job, city)
        instance_of = {make_token(job.seed, "instance", job.index, a): a for a in range(len(setup.scenario.actors))}
        scene = tiny_nusc.get("scene", make_token(job.seed, "scene", job.index))
        samples = [s for s in tiny_nusc.sample if s["scene_token"] == scene["token"]]
        for sample, channel in ((s, c) for s in samples for c in CAMERA_CHANNELS):
            record = tiny_nusc.get("sample_data", sample["data"][channel])
            frame = render_camera(setup, city, job, channel, record["timestamp"])
            _, boxes, intrinsic = tiny_nusc.get_sample_data(record["token"])
            for box in boxes:
                annotation = tiny_nusc.get("sample_annotation", box.token)
                u, v = view_points(box.center[:, None], intrinsic, normalize=True)[:2, 0]
                if annotation["visibility_token"] != "4" or box.center[2] < 1.0 or \
                        not (0 <= u < config.image_size[0] and 0 <= v < config.image_size[1]):
                    continue
                total += 1
                neighbourhood = frame.actor[max(int(v) - 2, 0):int(v) + 3, max(int(u) - 2, 0):int(u) + 3]
                hits += instance_of[annotation["instance_token"]] in neighbourhood
    assert total > 40 and hits / total > 0.9, (hits, total)


def _tree_digest(root: Path) -> str:
    """Every file's name and bytes but the marker's, whose write id differs by design."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_identical_bytes_and_another_seed_another_world(tmp_path):
    small = dict(scenes=2, val_scenes=1, samples_per_scene=2, sweeps=1, camera_sweeps=1, image_size=(96, 54))
    write_dataset(SynthConfig(out=tmp_path / "a", seed=5, workers=1, **small), progress=False)
    write_dataset(SynthConfig(out=tmp_path / "b", seed=5, workers=2, **small), progress=False)
    write_dataset(SynthConfig(out=tmp_path / "c", seed=6, workers=1, **small), progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_objects_per_class_counts_each_seen_instance_once(tiny_nusc, tiny_world):
    from vexkd_core.data.nuscenes_source import NuScenesSource, split_scene_names

    counts = NuScenesSource(tiny_world[0], tiny_world[1].version, "val", 0, nusc=tiny_nusc).objects_per_class()
    # Independently, from the devkit's instance table: an instance counts once if any of its
    # annotations lies in a val scene and was seen by a sensor.
    val_scenes = {scene["token"] for scene in tiny_nusc.scene if scene["name"] in split_scene_names(tiny_nusc, "val")}
    expected = dict.fromkeys(DETECTION_CLASSES, 0)
    for instance in tiny_nusc.instance:
        name = category_to_detection_name(tiny_nusc.get("category", instance["category_token"])["name"])
        annotations = [a for a in tiny_nusc.sample_annotation if a["instance_token"] == instance["token"]]
        if name and any(tiny_nusc.get("sample", a["sample_token"])["scene_token"] in val_scenes
                        and a["num_lidar_pts"] + a["num_radar_pts"] > 0 for a in annotations):
            expected[name] += 1
    assert counts == expected and sum(counts.values()) > 0


def test_only_the_vehicle_right_before_a_trailer_tows_it():
    """A row with two trucks: the second is not the one in front of the trailer, so it keeps
    a driving gap (finding a slot by category once gave every truck the towing gap)."""
    from vexkd_core.data.synthetic.actors import _Placer, _RoadTraffic
    from vexkd_core.data.synthetic.city import LaneSegment

    lane = LaneSegment(road=0, axis=0, position=0.0, direction=1, start=-500.0, end=500.0, index_from_center=0)
    placer = _Placer(np.random.default_rng(0))
    traffic = _RoadTraffic(placer, city=None, ego=None, ego_lane=None, junction=None, duration_s=10.0)
    row = ["vehicle.truck", "vehicle.trailer", "vehicle.car", "vehicle.truck", "vehicle.car"]
    traffic._row(lane, speed=8.0, categories=row, start=0.0, length=400.0, step_direction=1)
    actors = placer.actors
    assert [a.category for a in actors] == row
    gaps = [(b.center[0] - b.size_lwh[0] / 2) - (a.center[0] + a.size_lwh[0] / 2) for a, b in zip(actors, actors[1:])]
    assert gaps[0] == pytest.approx(0.6)
    assert all(gap >= 5.0 for gap in gaps[1:]), gaps
