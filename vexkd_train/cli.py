"""vexkd-train: train the teacher and the students, and evaluate checkpoints.

    vexkd-train teacher --dataroot D --version V --config tiny --out runs/teacher
    vexkd-train student --modality lidar --dataroot D --version V --config tiny --out runs/lidar
    vexkd-train eval --checkpoint runs/teacher/model.pt --dataroot D --version V --split val --out runs/eval
    vexkd-train export --checkpoint runs/lidar/model.pt --out runs/lidar/onnx      (ONNX graph + sidecar)
    vexkd-train eval --backend onnxruntime --checkpoint runs/lidar/onnx/model.onnx ...
    torchrun --nproc_per_node 2 -m vexkd_train.cli teacher ...   (multi-process, DDP)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vexkd_core.cli import CliError, OneLineParser, run_cli
from vexkd_core.distill.distiller import MODES
from vexkd_core.distill.losses import DISTANCES
from vexkd_core.distill.mask_generator import QUERIES
from vexkd_core.inference import BACKENDS
from vexkd_core.models.fusion import FUSERS
from vexkd_train.experiment_plan import SUITES, TABLES
from vexkd_train.masks import KINDS, MaskSettings


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


def _image_encoder_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-encoder-from", type=Path, metavar="CAMERA_CKPT",
                        help="start the image backbone, neck and depth network from a trained camera student or "
                             "teacher (as camera BEV detectors start from a pretrained image network), e.g. "
                             "pretrained/camera_world_seed3.pt for the tiny preset")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vexkd-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    teacher = commands.add_parser("teacher", help="train the LiDAR+camera fusion teacher")
    _training_arguments(teacher)
    teacher.add_argument("--init-from", type=Path, metavar="LIDAR_CKPT",
                         help="start the LiDAR encoder, decoder and heads from a trained LiDAR model "
                              "(BEVFusion's practice: pre-train the LiDAR branch, then fine-tune fused)")
    _image_encoder_argument(teacher)
    teacher.add_argument("--fuser", choices=FUSERS, help="mgfm (VeXKD's fusion module, the default) or convfuser "
                         "(BEVFusion's concatenation + conv, for comparison); sets model.fuser")
    student = commands.add_parser("student", help="train a single-modality student, optionally distilled")
    student.add_argument("--modality", choices=("lidar", "camera"), required=True)
    _training_arguments(student)
    student.add_argument("--teacher", type=Path, help="teacher checkpoint (needed unless --distill none)")
    student.add_argument("--masks", type=Path, help="mask generators (for --distill vexkd / random-query / fused-query)")
    student.add_argument("--distill", choices=MODES, default="none")
    student.add_argument("--levels", default="low,high", help="feature levels to distil: low, high or low,high")
    student.add_argument("--loss", choices=DISTANCES, default="at", help="feature distance")
    student.add_argument("--distill-weights", default="1.0,1.0", metavar="LOW,HIGH")
    _image_encoder_argument(student)
    masks = commands.add_parser("masks", help="train the mask generators of a frozen teacher")
    masks.add_argument("--teacher", type=Path, required=True)
    masks.add_argument("--dataroot", type=Path, required=True)
    masks.add_argument("--version", default="v1.0-trainval")
    masks.add_argument("--split", default="train")
    masks.add_argument("--out", type=Path, required=True, help="folder for masks.pt and its log")
    masks.add_argument("--mask-kind", choices=KINDS, default="soft",
                       help="soft: MasKD's sigmoid masks with token weights (default); decided: 0/1 cells, ours")
    masks.add_argument("--masks-per-generator", type=int, default=MaskSettings.masks_per_generator)
    masks.add_argument("--blocks", type=int, default=MaskSettings.blocks, help="transformer blocks (paper: 3)")
    masks.add_argument("--query", choices=QUERIES, default="teacher",
                       help="what the generators' query is: the teacher's MGFM query (the paper's), random (the "
                            "ablation; the only one for a ConvFuser teacher) or each sample's fused BEV map")
    masks.add_argument("--area-budget", type=float, default=MaskSettings.area_budget,
                       help="decided masks: share of the map the masks of a generator cover together, in equal parts")
    masks.add_argument("--max-epochs", type=int, help="default: the recipe's for the teacher's preset (tiny: 8)")
    masks.add_argument("--batch-size", type=int, default=0,
                       help="samples per step (0: the teacher's train.batch_size); memory grows with it")
    masks.add_argument("--max-steps", type=int,
                       help="stop after this many steps (0: every step of the epochs); default: the recipe's "
                            "(nuscenes: MasKD's 2,000)")
    masks.add_argument("--report-split", default="val", metavar="SPLIT",
                       help="split the selectivity report is measured on")
    masks.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    masks.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    masks.add_argument("--export-split", metavar="SPLIT",
                       help="also write <out>/masks_<SPLIT>.npz: every sample's generated masks")
    experiment = commands.add_parser("experiment", help="the paper's comparison and ablation tables, resumable")
    experiment.add_argument("--suite", choices=tuple(SUITES), default="quick",
                            help="quick (seconds), paper (the paper's tables, 3 seeds) or study (the mask study, "
                                 "docs/mask_study.md)")
    experiment.add_argument("--dataroot", type=Path, required=True)
    experiment.add_argument("--version", default="v1.0-trainval")
    experiment.add_argument("--config", default="tiny", help="tiny, nuscenes, or a YAML file")
    experiment.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    experiment.add_argument("--out", type=Path, required=True)
    experiment.add_argument("--seeds", type=int, nargs="+", help="replace the suite's seeds (paper: 0 1 2)")
    experiment.add_argument("--ablation-seeds", type=int, nargs="+",
                            help="seeds of the generator-blocks and distance tables (default: --seeds)")
    experiment.add_argument("--tables", nargs="+", metavar="TABLE",
                            help=f"only these tables and what they need: {' '.join(TABLES)} (default: the "
                                 "suite's)")
    experiment.add_argument("--heldout", type=Path, metavar="DATAROOT",
                            help="also evaluate the main tables' checkpoints on this dataset's val split")
    experiment.add_argument("--test-world", type=Path, metavar="DATAROOT",
                            help="the study's untouched test world: its tables' checkpoints are also evaluated on "
                                 "this dataset's val split (never used to choose a design)")
    experiment.add_argument("--jobs", type=int, default=1,
                            help="students trained side by side, each process on an equal share of the cores")
    experiment.add_argument("--ledger", type=Path, metavar="FOLDER",
                            help="keep each finished student's results here, and reuse those made from the same "
                                 "inputs: commit it to resume the suite on another machine (docs/mask_study.md)")
    evaluation = commands.add_parser("eval", help="nuScenes detection metrics, map mIoU, latency")
    evaluation.add_argument("--checkpoint", type=Path, required=True)
    evaluation.add_argument("--dataroot", type=Path, required=True)
    evaluation.add_argument("--version", default="v1.0-trainval")
    evaluation.add_argument("--split", default="val")
    evaluation.add_argument("--out", type=Path, required=True)
    evaluation.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    evaluation.add_argument("--backend", choices=BACKENDS, default="torch",
                            help="torch (a .pt checkpoint) or onnxruntime (an exported .onnx with its .json)")
    evaluation.add_argument("--drop-sensor", choices=("lidar", "camera"),
                            help="evaluate with this sensor missing (a fusion model's robustness)")
    evaluation.add_argument("--save-maps", action="store_true",
                            help="also write maps.npz: each sample's map probabilities (float16)")
    export = commands.add_parser("export",
                                 help="a checkpoint as an ONNX graph + JSON sidecar, checked with onnxruntime")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="folder for <checkpoint stem>.onnx and .json")
    export.add_argument("--quantize", choices=("int8",),
                        help="also write <stem>.int8.onnx for CPU inference (the students; recipe and float islands "
                             "in vexkd_core/onnx_quantize.py), calibrated on --dataroot and checked against the "
                             "float graph")
    export.add_argument("--dataroot", type=Path, help="with --quantize: the dataset the checkpoint was trained on")
    export.add_argument("--version", default="v1.0-trainval")
    export.add_argument("--calibration-frames", type=int, default=32, metavar="N",
                        help="with --quantize: N training frames set the ranges, N others check the graph")
    return parser


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda, but PyTorch sees no CUDA device here")


def _user_errors():
    """The exceptions that mean 'fix your input', turned into one-line CliErrors."""
    from vexkd_core.errors import CheckpointError
    from vexkd_core.data.nuscenes_source import DatasetError

    return (CheckpointError, DatasetError, ValueError, FileNotFoundError)  # ExportError is a ValueError


def run_training(args: argparse.Namespace) -> None:
    from vexkd_core.config import load_config
    from vexkd_core.data.dataset import model_source
    from vexkd_core.models.vexkd import initial_model
    from vexkd_train.trainer import RunOptions, train
    from vexkd_train.training_setup import initialise_from_lidar, initialise_image_stages

    _check_device(args.device)
    modality = "fusion" if args.command == "teacher" else args.modality
    try:
        config = load_config(args.config, args.set + ([f"model.fuser={args.fuser}"]
                                                      if args.command == "teacher" and args.fuser else []))
        source = model_source(args.dataroot, args.version, args.split, config, config.train.augment)
        model = initial_model(config, modality)
        if args.command == "teacher" and args.init_from is not None:
            initialise_from_lidar(model, args.init_from)
        if args.image_encoder_from is not None:
            initialise_image_stages(model, args.image_encoder_from)
        distiller = _distiller(args, model) if args.command == "student" else None
        final = train(model, config, source, modality, RunOptions(args.out, args.device, args.resume,
                                                                   args.max_steps, args.max_epochs), distiller)
    except _user_errors() as error:
        raise CliError(str(error)) from None
    print(f"wrote {final}")


def _distiller(args: argparse.Namespace, student):
    """The masked feature distillation loss of `--distill`, or None for a baseline student."""
    from vexkd_train.training_setup import build_distiller

    if args.distill == "none":
        return None
    if args.teacher is None:
        raise CliError(f"--distill {args.distill} needs --teacher")
    levels = tuple(level.strip() for level in args.levels.split(",") if level.strip())
    try:
        low, high = (float(w) for w in args.distill_weights.split(","))
    except ValueError:
        raise CliError(f"--distill-weights must be two numbers LOW,HIGH, not '{args.distill_weights}'") from None
    return build_distiller(args.teacher, student, args.distill, levels, args.loss, {"low": low, "high": high},
                           args.masks)


def run_masks(args: argparse.Namespace) -> None:
    from vexkd_core.checkpoint import load_checkpoint
    from vexkd_core.config import from_dict
    from vexkd_core.data.dataset import model_source
    from vexkd_core.data.nuscenes_source import NuScenesSource
    from vexkd_train.masks import MaskSettings, export_masks, train_masks

    _check_device(args.device)
    try:
        config = from_dict(load_checkpoint(args.teacher)["config"])
        given = {"epochs": args.max_epochs, "max_steps": args.max_steps}
        settings = MaskSettings.recipe(args.mask_kind, config.name, masks_per_generator=args.masks_per_generator,
                                       blocks=args.blocks, query=args.query,
                                       area_budget=args.area_budget, batch_size=args.batch_size,
                                       **{name: value for name, value in given.items() if value is not None})
        settings.validate()  # before reading a dataset that may take a minute to index
        source = model_source(args.dataroot, args.version, args.split, config, config.train.augment)
        report_source = model_source(args.dataroot, args.version, args.report_split, config, False, nusc=source.nusc)
        path = train_masks(args.teacher, source, args.out, settings, args.device, report_source=report_source,
                           resume=args.resume)
        print(f"wrote {path}")
        print(f"query movement in mask training: {args.out / 'query_movement.json'}")
        print(f"mask selectivity on {args.report_split} ({args.out / 'selectivity.json'}):")
        print((args.out / "selectivity.md").read_text().rstrip())
        if args.export_split:
            split = NuScenesSource(args.dataroot, args.version, args.export_split, config.model.lidar.sweeps,
                                   nusc=source.nusc)
            print(f"wrote {export_masks(args.teacher, path, split, args.out / f'masks_{args.export_split}.npz', args.device)}")
    except _user_errors() as error:
        raise CliError(str(error)) from None


def run_experiment_command(args: argparse.Namespace) -> None:
    from vexkd_train.experiment import run_experiment

    try:
        run_experiment(args.dataroot, args.version, args.out, args.suite, args.config, args.set,
                       seeds=args.seeds, ablation_seeds=args.ablation_seeds,
                       heldout=args.heldout, test_world=args.test_world, jobs=args.jobs, only=args.tables,
                       ledger=args.ledger)
    except _user_errors() as error:
        raise CliError(str(error)) from None
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")


def run_eval(args: argparse.Namespace) -> None:
    from vexkd_train.evaluate import evaluate, metrics_table

    _check_device(args.device)
    try:
        metrics = evaluate(args.checkpoint, args.dataroot, args.version, args.split, args.out, args.device,
                           save_maps=args.save_maps, drop_sensor=args.drop_sensor, backend=args.backend)
    except _user_errors() as error:
        raise CliError(str(error)) from None
    print(metrics_table(metrics))
    print(f"wrote {args.out / 'metrics.json'}")


def run_export(args: argparse.Namespace) -> None:
    from vexkd_core.onnx_export import OPSET, export_onnx
    from vexkd_core.onnx_quantize import BOX_SCORE, Calibration, export_int8

    if args.quantize and args.dataroot is None:
        raise CliError("--quantize int8 calibrates on the checkpoint's training data: give its --dataroot")
    if args.calibration_frames < 1:
        raise CliError(f"--calibration-frames must be at least 1, not {args.calibration_frames}")
    try:
        result = export_onnx(args.checkpoint, args.out)
        differences = ", ".join(f"{name} {value:.1e}" for name, value in result.max_difference.items())
        print(f"wrote {result.onnx_path} (opset {OPSET}, {result.onnx_path.stat().st_size / 2**20:.1f} MiB) "
              f"and {result.sidecar_path}")
        print(f"onnxruntime vs torch on check inputs, largest |difference|: {differences}")
        if args.quantize:
            int8 = export_int8(result.onnx_path, Calibration(args.dataroot, args.version, args.calibration_frames))
            print(f"wrote {int8.onnx_path} ({int8.onnx_path.stat().st_size / 2**20:.1f} MiB) and {int8.sidecar_path}")
            check = int8.fidelity
            print(f"int8 vs float32 on {check['frames']} other training frames: boxes missed "
                  f"{check['boxes_missed']:.1%}, spurious {check['boxes_spurious']:.1%} (of {check['boxes_float']} "
                  f"float boxes at score >= {BOX_SCORE}), map cells flipped {check['map_cells_flipped']:.2%}")
    except _user_errors() as error:
        raise CliError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {"teacher": run_training, "student": run_training, "masks": run_masks,
                                    "experiment": run_experiment_command, "eval": run_eval,
                                    "export": run_export}, argv)


if __name__ == "__main__":
    sys.exit(main())
