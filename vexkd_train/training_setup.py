"""What the `teacher` and `student` commands and the experiment runner build alike: a
teacher started from a LiDAR model, a camera encoder started from another model's image
stages, and the distiller of a student. One function each, so
the checks they make (grids, encoders) hold wherever a run is started from."""
from __future__ import annotations

from pathlib import Path

from vexkd_core.checkpoint import model_from_checkpoint, state_dict_mismatch
from vexkd_core.distill.distiller import GENERATED, Distiller
from vexkd_core.errors import CheckpointError
from vexkd_core.models.vexkd import BEVModel
from vexkd_train.masks import load_masks


def initialise_from_lidar(teacher: BEVModel, checkpoint: Path) -> None:
    """The teacher's LiDAR encoder, decoder and heads from a trained LiDAR model."""
    lidar, lidar_config, _ = model_from_checkpoint(checkpoint, expected_modality="lidar")
    if (lidar_config.grid, lidar_config.model.lidar) != (teacher.config.grid, teacher.config.model.lidar):
        raise CheckpointError(f"{checkpoint} has another BEV grid or LiDAR encoder than the teacher")
    try:
        teacher.load_lidar_branch(lidar)
    except RuntimeError as error:  # the decoder or heads differ in shape (channels, ...)
        raise CheckpointError(f"{checkpoint}'s decoder and heads do not fit the teacher's config: "
                              f"{state_dict_mismatch(error)}") from None


def initialise_image_stages(model: BEVModel, checkpoint: Path) -> None:
    """`model`'s image backbone, neck and depth/context network from a trained camera student or
    teacher (`CameraEncoder.IMAGE_STAGES`); its BEV side, decoder and heads keep their start."""
    encoder = model.camera_encoder
    if encoder is None:
        raise ValueError("--image-encoder-from is for models that read cameras (a camera student or the teacher)")
    source, _, _ = model_from_checkpoint(checkpoint)
    source_encoder = source.camera_encoder
    if source_encoder is None:
        raise CheckpointError(f"{checkpoint} holds a lidar model: it has no image encoder to start from")
    try:
        encoder.load_image_stages(source_encoder)
    except ValueError as error:
        raise CheckpointError(f"{checkpoint}: {error}") from None
    except RuntimeError as error:  # another backbone, feature width or number of depth bins
        raise CheckpointError(f"{checkpoint}'s image encoder does not fit this model's config: "
                              f"{state_dict_mismatch(error)}") from None


def build_distiller(teacher_checkpoint: Path, student: BEVModel, mode: str, levels: tuple[str, ...], distance: str,
                    weights: dict[str, float], masks: Path | None = None) -> Distiller:
    """The distiller of `student` from a teacher checkpoint (and mask generators for the
    generated modes); ValueError for inputs that cannot go together."""
    # Generated masks read an MGFM teacher's query; the hand-made ones take any teacher, a
    # LiDAR-only model too (the experiment's self-distillation control).
    teacher, teacher_config, _ = model_from_checkpoint(teacher_checkpoint,
                                                       expected_modality="fusion" if mode in GENERATED else None)
    config = student.config
    if (teacher_config.grid, teacher_config.map_grid) != (config.grid, config.map_grid):
        raise ValueError("the student's BEV grids differ from the teacher's: distillation compares the same cells")
    if not levels or set(levels) - {"low", "high"}:
        raise ValueError(f"--levels must be low, high or low,high, not '{','.join(levels)}'")
    if mode in GENERATED and masks is None:
        raise ValueError(f"--distill {mode} needs --masks (from vexkd-train masks)")
    generators = load_masks(masks, teacher, query=GENERATED[mode]) if mode in GENERATED else None
    return Distiller(teacher, student, mode, levels, distance, weights, generators)
