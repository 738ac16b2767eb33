"""vexkd-data: write the synthetic nuScenes-format world, render samples of any dataset, and
build the GT-paste database of one.

    vexkd-data synth --out DIR [--overwrite] [--scenes N] [--samples-per-scene M] [--sweeps K] ...
    vexkd-data render --dataroot DIR [--version V] --sample TOKEN|INDEX --out PNG
    vexkd-data gt-database --dataroot DIR [--version V] [--split train] [--out DIR] [--sweeps K] [--overwrite]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vexkd_core.cli import CliError, OneLineParser, run_cli
from vexkd_core.config import preset


def _image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 800x450, got '{text}'") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vexkd-data", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write a synthetic dataset in the nuScenes schema")
    synth.add_argument("--out", type=Path, required=True, help="dataset root to write (dataroot)")
    synth.add_argument("--scenes", type=int, default=10)
    synth.add_argument("--val-scenes", type=int, default=2, help="how many of the scenes form the val split")
    synth.add_argument("--samples-per-scene", type=int, default=10, help="key frames per scene (2 Hz)")
    synth.add_argument("--sweeps", type=int, default=9, help="LiDAR sweeps kept before each key frame (20 Hz)")
    synth.add_argument("--camera-sweeps", type=int, default=5, help="camera frames between key frames (12 Hz)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=_image_size, default=(800, 450), metavar="WxH")
    synth.add_argument("--version", default="v1.0-trainval",
                       help="table folder name; its suffix picks the scene names (trainval or mini)")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="scenes simulated in parallel")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace a world vexkd-data wrote earlier at --out (known by its marker file); "
                            "a folder without the marker is never removed")

    render = commands.add_parser("render", help="picture of a sample: BEV + 6 cameras with GT boxes")
    render.add_argument("--dataroot", type=Path, required=True)
    render.add_argument("--version", default="v1.0-trainval")
    render.add_argument("--sample", required=True, help="sample token, or an index into the sample table")
    render.add_argument("--out", type=Path, required=True, help="PNG to write")

    database = commands.add_parser("gt-database", help="the GT-paste database: each object's points in its box")
    database.add_argument("--dataroot", type=Path, required=True)
    database.add_argument("--version", default="v1.0-trainval")
    database.add_argument("--split", default="train")
    database.add_argument("--out", type=Path,
                          help="folder to write (default: DATAROOT/vexkd_gt_database_<version>_<split>, "
                               "where training looks when augment.gt_database is unset)")
    database.add_argument("--sweeps", type=int, default=preset("nuscenes").model.lidar.sweeps,
                          help="previous LiDAR sweeps per key frame, as the model to train reads "
                               "(model.lidar.sweeps; default: the nuscenes preset's)")
    database.add_argument("--min-points", type=int,
                          help="objects with fewer points are left out (default: mmdet3d's, 5)")
    database.add_argument("--overwrite", action="store_true",
                          help="replace a database vexkd-data wrote earlier at --out (known by its marker file)")
    return parser


def run_synth(args: argparse.Namespace) -> None:
    from vexkd_core.data.synthetic import SynthConfig, write_dataset

    config = SynthConfig(out=args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                         sweeps=args.sweeps, camera_sweeps=args.camera_sweeps, seed=args.seed,
                         image_size=args.image_size, version=args.version, val_scenes=args.val_scenes,
                         workers=max(1, args.workers))
    started = time.monotonic()
    try:
        counts = write_dataset(config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        raise CliError(str(error)) from None
    summary = ", ".join(f"{value} {name}" for name, value in counts.items())
    print(f"wrote {summary} to {args.out} in {time.monotonic() - started:.0f} s")


def run_render(args: argparse.Namespace) -> None:
    import cv2

    from vexkd_core.data.nuscenes_source import DatasetError, open_nuscenes
    from vexkd_core.data.render import render_sample
    from vexkd_core.io import atomic_write_bytes

    try:
        nusc = open_nuscenes(args.dataroot, args.version)
    except DatasetError as error:
        raise CliError(str(error)) from None
    token = args.sample
    if token.isdigit():
        if int(token) >= len(nusc.sample):
            raise CliError(f"sample index {token} is out of range (dataset has {len(nusc.sample)} samples)")
        token = nusc.sample[int(token)]["token"]
    try:
        nusc.get("sample", token)
    except KeyError:
        raise CliError(f"no sample with token '{token}' in {args.dataroot}/{args.version}") from None
    if args.out.suffix.lower() != ".png":
        raise CliError(f"--out must name a .png file, got '{args.out}'")
    ok, encoded = cv2.imencode(".png", render_sample(nusc, token))
    atomic_write_bytes(args.out, encoded.tobytes())
    print(f"wrote {args.out}")


def run_gt_database(args: argparse.Namespace) -> None:
    from vexkd_core.data.gt_database import MIN_POINTS, default_database_path, write_database
    from vexkd_core.data.nuscenes_source import DatasetError, NuScenesSource

    min_points = MIN_POINTS if args.min_points is None else args.min_points
    if args.sweeps < 0 or min_points < 1:
        raise CliError("--sweeps must be at least 0 and --min-points at least 1")
    out = args.out or default_database_path(args.dataroot, args.version, args.split)
    started = time.monotonic()
    try:
        source = NuScenesSource(args.dataroot, args.version, args.split, args.sweeps)
        kept = write_database(source, out, overwrite=args.overwrite, min_points=min_points)
    except (DatasetError, FileExistsError, PermissionError) as error:  # e.g. a read-only dataroot
        raise CliError(str(error)) from None
    summary = ", ".join(f"{count} {name}" for name, count in kept.items())
    print(f"wrote {sum(kept.values())} objects ({summary}) of {len(source)} samples to {out} "
          f"in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"synth": run_synth, "render": run_render, "gt-database": run_gt_database}, argv)


if __name__ == "__main__":
    sys.exit(main())
