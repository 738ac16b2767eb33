"""vexkd-train: train the teacher and the students, and evaluate checkpoints.

    vexkd-train teacher --dataroot D --version V --config tiny --out runs/teacher
    vexkd-train student --modality lidar --dataroot D --version V --config tiny --out runs/lidar
    vexkd-train eval --checkpoint runs/teacher/model.pt --dataroot D --version V --split val --out runs/eval
    torchrun --nproc_per_node 2 -m vexkd_train.cli teacher ...   (multi-process, DDP)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vexkd_core.cli import CliError, OneLineParser, run_cli


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", type=Path, required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="train")
    parser.add_argument("--config", default="tiny", help="tiny, nuscenes, or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set train.batch_size=4")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and log.csv")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--max-epochs", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vexkd-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _training_arguments(commands.add_parser("teacher", help="train the LiDAR+camera fusion teacher"))
    student = commands.add_parser("student", help="train a single-modality student")
    student.add_argument("--modality", choices=("lidar", "camera"), required=True)
    _training_arguments(student)
    evaluation = commands.add_parser("eval", help="nuScenes detection metrics, map mIoU, latency")
    evaluation.add_argument("--checkpoint", type=Path, required=True)
    evaluation.add_argument("--dataroot", type=Path, required=True)
    evaluation.add_argument("--version", default="v1.0-trainval")
    evaluation.add_argument("--split", default="val")
    evaluation.add_argument("--out", type=Path, required=True)
    evaluation.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return parser


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda, but PyTorch sees no CUDA device here")


def _user_errors():
    """The exceptions that mean 'fix your input', turned into one-line CliErrors."""
    from vexkd_core.checkpoint import CheckpointError
    from vexkd_core.data.nuscenes_source import DatasetError

    return (CheckpointError, DatasetError, ValueError, FileNotFoundError)


def run_training(args: argparse.Namespace) -> None:
    import torch

    from vexkd_core.config import load_config
    from vexkd_core.data.dataset import map_source_grid
    from vexkd_core.data.nuscenes_source import NuScenesSource
    from vexkd_core.models.vexkd import build_model
    from vexkd_train.trainer import RunOptions, train

    _check_device(args.device)
    modality = "fusion" if args.command == "teacher" else args.modality
    try:
        config = load_config(args.config, args.set)
        source = NuScenesSource(args.dataroot, args.version, args.split, config.model.lidar.sweeps,
                                map_source_grid(config, config.train.augment))
        torch.manual_seed(config.train.seed)  # the same config starts from the same weights
        model = build_model(config, modality)
        final = train(model, config, source, modality, RunOptions(args.out, args.device, args.resume,
                                                                   args.max_steps, args.max_epochs))
    except _user_errors() as error:
        raise CliError(str(error)) from None
    print(f"wrote {final}")


def run_eval(args: argparse.Namespace) -> None:
    from vexkd_train.evaluate import evaluate, metrics_table

    _check_device(args.device)
    try:
        metrics = evaluate(args.checkpoint, args.dataroot, args.version, args.split, args.out, args.device)
    except _user_errors() as error:
        raise CliError(str(error)) from None
    print(metrics_table(metrics))
    print(f"wrote {args.out / 'metrics.json'}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"teacher": run_training, "student": run_training, "eval": run_eval}, argv)


if __name__ == "__main__":
    sys.exit(main())
