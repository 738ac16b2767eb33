"""Training from the command line: checkpoints, exact resume, two-process DDP, evaluation
through the official devkit, and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vexkd_core.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FAST = ["--set", "train.batch_size=1", "--set", "model.lidar.sweeps=1"]


def vexkd_train(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vexkd-train"), *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_resumed_training_ends_with_the_same_weights(tiny_world, tmp_path):
    # In one process: across processes the CPU math libraries may pick kernels by memory
    # alignment, so two uninterrupted runs can differ in the last bits; within one they do not.
    from vexkd_core.config import load_config
    from vexkd_core.data.dataset import map_source_grid
    from vexkd_core.data.nuscenes_source import NuScenesSource
    from vexkd_core.models.vexkd import build_model
    from vexkd_train.trainer import RunOptions, train

    dataroot, world = tiny_world
    config = load_config("tiny", ["train.batch_size=1", "model.lidar.sweeps=1", "train.checkpoint_every=2"])
    source = NuScenesSource(dataroot, world.version, "train", 1, map_source_grid(config, True))

    def run(folder, steps, resume=False):
        torch.manual_seed(0)
        options = RunOptions(tmp_path / folder, resume=resume, max_steps=steps, max_epochs=2, progress=False)
        return train(build_model(config, "lidar"), config, source, "lidar", options)

    straight = run("straight", 4)
    run("resumed", 2)
    resumed = run("resumed", 4, resume=True)
    a, b = weights(straight), weights(resumed)
    assert load_checkpoint(resumed)["step"] == 4
    for name in a:
        assert torch.equal(a[name], b[name]), name
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,lr,loss") and len(log) == 5
    run("resumed", 2)  # trained again from scratch in the same folder: its log is this run's alone
    assert len((tmp_path / "resumed" / "log.csv").read_text().splitlines()) == 3


def test_two_process_torchrun_keeps_ranks_identical(tiny_world, tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vexkd_train.cli",
         "student", "--modality", "lidar", "--dataroot", str(tiny_world[0]), *FAST, "--out", str(tmp_path / "ddp"),
         "--max-steps", "2"], capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 2
    first, second = checkpoint["rank_checksums"]
    assert first == second


def test_eval_writes_official_metrics_and_scores_an_empty_set_as_zero(tiny_world, tmp_path):
    dataroot = tiny_world[0]
    trained = vexkd_train("teacher", "--dataroot", dataroot, *FAST, "--out", tmp_path / "teacher", "--max-steps", 2)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = tmp_path / "teacher" / "model.pt"
    result = vexkd_train("eval", "--checkpoint", checkpoint, "--dataroot", dataroot, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == 8 and set(metrics["map"]["iou"]) == {
        "drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider"}
    assert {"lidar_encoder", "camera_encoder", "fusion", "decoder", "total"} <= set(metrics["latency_ms"])
    assert 0.0 <= metrics["detection"]["NDS"] <= 1.0 and "mAP" in result.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert len(results) == 8  # every sample of the split, as the devkit requires

    from vexkd_train.evaluate import evaluate
    payload = load_checkpoint(checkpoint)
    payload["config"]["model"]["score_threshold"] = 1.1  # nothing can pass: an empty prediction set
    torch.save(payload, tmp_path / "silent.pt")
    empty = evaluate(tmp_path / "silent.pt", dataroot, "v1.0-trainval", "val", tmp_path / "empty", progress=False)
    assert empty["detection"]["mAP"] == 0.0 and empty["detection"]["NDS"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["teacher", "--dataroot", "/nonexistent", "--out", "x"], "does not exist"),
    (["teacher", "--dataroot", "{world}", "--version", "v9.9", "--out", "x"], "no nuScenes tables for version 'v9.9'"),
    (["teacher", "--dataroot", "{world}", "--set", "train.nope=1", "--out", "x"], "unknown config field"),
    (["teacher", "--dataroot", "{world}", "--split", "holdout", "--out", "x"], "split 'holdout'"),
    (["eval", "--checkpoint", "missing.pt", "--dataroot", "{world}", "--out", "x"], "does not exist"),
    (["student", "--modality", "radar", "--dataroot", "{world}", "--out", "x"], "invalid choice"),
    (["teacher", "--dataroot", "{world}", "--out", "x", "--epochs", "3"], "unknown argument"),
])
def test_user_errors_are_one_line(tiny_world, tmp_path, args, message):
    args = [a.replace("{world}", str(tiny_world[0])) for a in args]
    result = subprocess.run([str(BIN / "vexkd-train"), *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
