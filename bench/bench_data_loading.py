"""Data loading of the nuscenes preset on full-resolution sensors: memory, speed, where it goes.

Writes once (data/bench/, which git ignores; reused afterwards) a synthetic world with six
1600x900 cameras and a 32-beam LiDAR with 10 sweeps per sample (`vexkd-data synth`
defaults), then iterates the nuscenes preset's TrainingSet with augmentation:

- resident memory against samples seen, in shuffled epochs, with a sample cache that holds
  a few samples: it must stay flat once the cache is full;
- throughput in samples/s with 0 and 2 DataLoader workers (memory of the workers included);
- where a sample's time goes: JPEG decode (reduced and full size), sweeps, map, preprocess;
- the tiny preset's cost of reading a sample against taking it from its cache, which is why
  its default cache holds its whole world.

Prints the figures and records bench/results/data_loading.json. CPU timings on a shared
machine: compare figures of one run with each other.

    python bench/bench_data_loading.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from vexkd_core.config import Config, override, preset  # noqa: E402
from vexkd_core.data.dataset import EpochSampler, TrainingSet, collate_training, model_source  # noqa: E402
from vexkd_core.data.preprocess import Augmentation, preprocess  # noqa: E402
from vexkd_core.data.sample import CAMERA_CHANNELS  # noqa: E402
from vexkd_core.data.sample_cache import sample_nbytes  # noqa: E402
from vexkd_core.data.sensor_files import decode_reduction, read_image  # noqa: E402
from vexkd_core.geometry import invert_transform  # noqa: E402
from vexkd_core.io import atomic_write_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "data_loading.json"
VERSION = "v1.0-trainval"
# Two scenes (the fewest synth writes) of six key frames: twelve samples, four times what
# the memory run's cache holds. Camera frames between key frames are not read here.
WORLD = dict(scenes=2, val_scenes=1, samples_per_scene=6, camera_sweeps=0, image_size=(1600, 900))
TINY_WORLD = dict(scenes=2, val_scenes=1, samples_per_scene=3, camera_sweeps=0, image_size=(480, 270))
CACHED_SAMPLES = 3


def synth_world(name: str, spec: dict) -> tuple[Path, float]:
    """(dataroot, seconds it took to write, by this run or the one that wrote it)."""
    out = REPO / "data" / "bench" / name
    seconds_file = out / "bench_write_seconds.txt"
    if (out / VERSION / "sample.json").is_file() and seconds_file.is_file():
        return out, float(seconds_file.read_text())
    started = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "vexkd-data"), "synth", "--out", str(out), "--overwrite",
                    "--scenes", str(spec["scenes"]), "--val-scenes", str(spec["val_scenes"]),
                    "--samples-per-scene", str(spec["samples_per_scene"]),
                    "--camera-sweeps", str(spec["camera_sweeps"]),
                    "--image-size", "x".join(map(str, spec["image_size"])), "--version", VERSION], check=True)
    seconds = time.monotonic() - started
    seconds_file.write_text(f"{seconds:.1f}\n")
    return out, seconds


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def children() -> list[int]:
    """This process's child processes (the DataLoader workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The parent pid is the 2nd field after the ')' that closes the command name.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
    return found


def proportional_mb(pid: int) -> float:
    """Resident MiB with pages shared between processes (the forked workers share the
    parent's libraries and tables) split among them, so a sum over processes adds up."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


def total_memory_mb() -> tuple[float, float]:
    """(proportional resident, sum of peak resident) MiB of this process and its workers; the
    second counts shared pages once per process, so it is an upper bound."""
    pids = [os.getpid(), *children()]
    return sum(proportional_mb(pid) for pid in pids), sum(memory_mb(pid)[1] for pid in pids)


def loader(dataset: TrainingSet, config: Config, workers: int, batch_size: int) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), batch_size, config.train.seed)
    # As the trainer builds it: workers start afresh each epoch (and see its set_epoch).
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_training,
                      num_workers=workers), sampler


def memory_curve(source, config: Config, epochs: int) -> dict:
    """Resident memory after each sample, one sample at a time in shuffled epochs."""
    dataset = TrainingSet(source, config, augment=True)
    data, sampler = loader(dataset, config, 0, 1)
    curve = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for _ in data:
            curve.append(round(memory_mb(os.getpid())[0], 1))
    first, last = curve[:len(dataset)], curve[-len(dataset):]  # the cache fills in the first epoch
    return {"cache_mb": config.train.sample_cache_mb, "cached_samples": len(dataset._cache),
            "samples_seen": len(curve), "rss_mb_after_each_sample": curve,
            "rss_growth_mb_first_to_last_epoch": round(max(last) - max(first), 1),
            "peak_rss_mb": round(memory_mb(os.getpid())[1], 1)}


def throughput(source, config: Config, workers: int, epochs: int) -> dict:
    """Samples/s over whole epochs (worker start-up included, as training sees it), and the
    memory of the main process and its workers after each batch."""
    dataset = TrainingSet(source, config, augment=True)
    data, sampler = loader(dataset, config, workers, config.train.batch_size)
    seen, memory, started = 0, [], time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch, _ in data:
            seen += batch.size
            memory.append(total_memory_mb())
    rate = seen / (time.perf_counter() - started)
    return {"workers": workers, "samples_per_s": round(rate, 2), "samples_timed": seen,
            "pss_mb_all_processes_after_each_batch": [round(m[0], 1) for m in memory],
            "peak_rss_mb_summed_over_processes": round(max(m[1] for m in memory), 1)}


def stage_ms(source, config: Config, samples: int) -> dict:
    """Median milliseconds per sample of each stage NuScenesSource.sample and preprocess run."""
    nusc, stages = source.nusc, {}
    rng = np.random.default_rng(0)

    def timed(name: str, step):
        started = time.perf_counter()
        result = step()
        stages.setdefault(name, []).append((time.perf_counter() - started) * 1e3)
        return result

    for index in range(samples):
        record = nusc.get("sample", source.tokens[index])
        lidar = nusc.get("sample_data", record["data"]["LIDAR_TOP"])
        lidar_to_ego, ego_to_global = source._pose(lidar)
        lidar_to_global = ego_to_global @ lidar_to_ego
        global_to_lidar = invert_transform(lidar_to_global)
        files = [Path(nusc.dataroot) / nusc.get("sample_data", record["data"][c])["filename"] for c in CAMERA_CHANNELS]
        timed("jpeg_decode_full_size_6_cameras", lambda: [read_image(path) for path in files])
        timed("jpeg_decode_6_cameras", lambda: source._cameras(record, global_to_lidar))
        timed("sweeps", lambda: source._points(lidar, global_to_lidar))
        timed("map_rasterisation", lambda: source._map(record, lidar_to_global))
        timed("boxes", lambda: source._boxes(record, global_to_lidar))
        sample = source.sample(index)
        timed("preprocess_augmented", lambda: preprocess(sample, config, Augmentation.random(config.augment, rng), rng))
    return {name: round(statistics.median(times), 1) for name, times in stages.items()}


def tiny_read_vs_cached(samples: int) -> dict:
    """The tiny preset: ms to get one training item when the sample is read, and when it is cached."""
    dataroot, _ = synth_world("data-loading-tiny", TINY_WORLD)
    config = preset("tiny")
    source = model_source(dataroot, VERSION, None, config, config.train.augment)
    figures = {}
    for label, cache_mb in (("read_ms", 0), ("cached_ms", config.train.sample_cache_mb)):
        dataset = TrainingSet(source, override(config, {"train.sample_cache_mb": cache_mb}), augment=True)
        for index in range(samples):
            dataset[index]  # fills the cache (when there is one)
        started = time.perf_counter()
        for index in range(samples):
            dataset[index]
        figures[label] = round((time.perf_counter() - started) / samples * 1e3, 1)
    figures["sample_mb"] = round(max(sample_nbytes(source.sample(i)) for i in range(len(source))) / 2**20, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="shuffled passes over the world per measurement")
    args = parser.parse_args()
    dataroot, written_s = synth_world("data-loading-1600x900", WORLD)
    config = preset("nuscenes")
    source = model_source(dataroot, VERSION, None, config, config.train.augment)
    samples = [source.sample(index) for index in range(len(source))]
    # A scene's first key frame has no earlier sweeps: the largest sample is a full one.
    sample_mb = max(sample_nbytes(sample) for sample in samples) / 2**20
    points = int(np.median([len(sample.points) for sample in samples]))
    images_mb = sum(view.image.nbytes for view in samples[0].cameras) / 2**20
    del samples
    # Room for CACHED_SAMPLES samples, so the world is several times what the cache holds.
    cached = override(config, {"train.sample_cache_mb": math.ceil(CACHED_SAMPLES * sample_mb * 1.1)})
    figures = {
        "world": {**{k: list(v) if isinstance(v, tuple) else v for k, v in WORLD.items()}, "samples": len(source),
                  "sweeps_per_sample": config.model.lidar.sweeps + 1, "median_points_per_sample": points,
                  "write_s": round(written_s, 1)},
        "decode_reduction": decode_reduction(WORLD["image_size"][0], config.model.camera.input_width),
        "sample_mb": round(sample_mb, 1),
        "images_mb": {"decoded": round(images_mb, 1),
                      "full_size": round(len(CAMERA_CHANNELS) * math.prod(WORLD["image_size"]) * 3 / 2**20, 1)},
        # Without a cache first: freed memory stays with the process, so the run after
        # another cannot show less than that one's peak.
        "memory_default_cache": memory_curve(source, config, args.epochs),
        "memory": memory_curve(source, cached, args.epochs),
        "throughput": [throughput(source, config, workers, args.epochs) for workers in (0, 2)],
        "stage_ms": stage_ms(source, config, len(source)),
        "tiny": tiny_read_vs_cached(6),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    stages = figures["stage_ms"]
    print(f"world: {len(source)} samples of 6 x 1600x900 JPEGs + {points} points "
          f"({figures['world']['sweeps_per_sample']} sweeps); decoded at 1/{figures['decode_reduction']}: "
          f"{sample_mb:.1f} MB a sample, of which images {images_mb:.1f} MB "
          f"({figures['images_mb']['full_size']:.1f} MB at full size)")
    for key in ("memory_default_cache", "memory"):
        entry = figures[key]
        print(f"RSS, cache {entry['cache_mb']} MB ({entry['cached_samples']} samples): "
              f"{entry['rss_mb_after_each_sample'][0]:.0f} -> {entry['rss_mb_after_each_sample'][-1]:.0f} MB over "
              f"{entry['samples_seen']} samples, {entry['rss_growth_mb_first_to_last_epoch']:+.0f} MB from the "
              f"first epoch's highest to the last's, peak {entry['peak_rss_mb']:.0f} MB")
    for entry in figures["throughput"]:
        print(f"{entry['workers']} workers: {entry['samples_per_s']:.2f} samples/s, all processes: PSS "
              f"{max(entry['pss_mb_all_processes_after_each_batch']):.0f} MB at most, summed peak RSS "
              f"{entry['peak_rss_mb_summed_over_processes']:.0f} MB")
    print("per sample (median ms): " + ", ".join(f"{name} {value:.0f}" for name, value in stages.items()))
    tiny = figures["tiny"]
    print(f"tiny preset: a training item {tiny['read_ms']:.0f} ms read, {tiny['cached_ms']:.0f} ms cached "
          f"({tiny['sample_mb']:.1f} MB a sample)")
    atomic_write_json(RESULTS, figures)
    print(f"recorded {RESULTS}")


if __name__ == "__main__":
    main()
