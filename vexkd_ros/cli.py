"""`vexkd-ros`: nuScenes -> rosbag2, bag replay, and the whole stack on a bag."""
from __future__ import annotations

import argparse
from pathlib import Path

from vexkd_core.cli import CliError, OneLineParser, run_cli

# player.MIN_RATE and MAX_RATE, which PlayOptions enforces; written out because importing the
# player (rclpy) would slow every --help by seconds.
RATE_HELP = "replay speed factor from 0.01 to 100, e.g. 2 plays twice as fast"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vexkd-ros", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    to_bag = commands.add_parser("nuscenes-to-bag", help="one rosbag2 per scene: sensors, TF, ground truth")
    to_bag.add_argument("--dataroot", type=Path, required=True)
    to_bag.add_argument("--version", default="v1.0-trainval")
    scenes = to_bag.add_mutually_exclusive_group(required=True)
    scenes.add_argument("--scene", nargs="+", metavar="NAME", help="scene names, e.g. scene-0103")
    scenes.add_argument("--all", action="store_true", help="every scene of the dataset")
    to_bag.add_argument("--out", type=Path, required=True, help="folder that receives one bag per scene")
    to_bag.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    to_bag.add_argument("--no-sweeps", action="store_true", help="key frames only (2 Hz)")
    play = commands.add_parser("play", help="publish a bag's messages with their original timing")
    play.add_argument("bag", type=Path)
    play.add_argument("--rate", type=float, default=1.0, help=RATE_HELP)
    play.add_argument("--loop", action="store_true")
    play.add_argument("--clock", action="store_true", help="also publish /clock from the bag's timestamps")
    play.add_argument("--topics", nargs="+", default=(), help="only these topics")
    play.add_argument("--wait-for", nargs="+", default=(), metavar="TOPIC",
                      help="start only once each of these topics has a subscriber")
    stack = commands.add_parser("stack", help="player + detector nodes as processes; record; summarise")
    stack.add_argument("--bag", type=Path, required=True)
    stack.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                       help="model.pt files or exported .onnx graphs (served with onnxruntime); each starts "
                            "the node of its modality")
    stack.add_argument("--modality", choices=("lidar", "camera", "fusion", "all"), default="all")
    stack.add_argument("--record", type=Path, help="write the nodes' outputs to this bag")
    stack.add_argument("--rate", type=float, default=1.0, help=RATE_HELP)
    return parser


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CliError(f"{what} {path} does not exist")


def _check_new(path: Path, flag: str) -> None:
    """Refuse up front, naming the flag to change, a bag the writer would refuse at the end."""
    if path.exists():
        raise CliError(f"{flag} {path} already exists; remove it or choose another {flag}")


def run_to_bag(args: argparse.Namespace) -> None:
    from vexkd_core.data.nuscenes_source import DatasetError

    from .bag import BagError, write_scene_bag
    from .scene_messages import SceneMessages, scene_source

    try:
        source = scene_source(args.dataroot, args.version)
        if source.maps_missing:
            print(f"ground-truth map topics skipped: {source.maps_missing}")
        names = [s["name"] for s in source.nusc.scene] if args.all else args.scene
        scenes = [SceneMessages(source, name, sweeps=not args.no_sweeps) for name in names]
        for scene in scenes:
            _check_new(args.out / scene.scene["name"], "--out")
        for scene in scenes:
            counts = write_scene_bag(scene, args.out / scene.scene["name"], args.storage)
            print(f"wrote {args.out / scene.scene['name']}: {sum(counts.values())} messages on {len(counts)} topics")
    except (DatasetError, BagError) as error:
        raise CliError(str(error)) from None


def run_play(args: argparse.Namespace) -> None:
    import rclpy

    from .bag import BagError
    from .environment import apply_default_ros_environment
    from .player import BagPlayer, PlayOptions

    apply_default_ros_environment()
    rclpy.init()
    player = None
    try:
        player = BagPlayer(args.bag, PlayOptions(args.rate, args.loop, args.clock, tuple(args.topics),
                                                 tuple(args.wait_for)))
        published = player.play(stop=lambda: not rclpy.ok())
        print(f"published {published} messages")
    except BagError as error:
        raise CliError(str(error)) from None
    finally:
        if player is not None:
            player.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def run_stack_command(args: argparse.Namespace) -> None:
    from vexkd_core.errors import CheckpointError

    from .bag import BagError
    from .player import check_rate
    from .stack import run_stack

    for path in args.checkpoint:
        _check_file(path, "checkpoint")
    if args.record is not None:
        _check_new(args.record, "--record")
    try:
        check_rate(args.rate)  # now, not once the nodes are up and the player process refuses it
        run_stack(args.bag, args.checkpoint, args.modality, args.record, args.rate)
    except (BagError, CheckpointError) as error:
        raise CliError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"nuscenes-to-bag": run_to_bag, "play": run_play, "stack": run_stack_command},
                   argv)


def player_main() -> int:
    """The `bag_player` executable: `vexkd-ros play` under the node's name."""
    import sys

    return main(["play", *[a for a in sys.argv[1:] if a != "--ros-args"]])


if __name__ == "__main__":
    raise SystemExit(main())
