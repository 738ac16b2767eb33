"""What the detector-node tests serve: random-weight models with spread scores
(spread_models.py) saved as checkpoints for the tiny world, and the node each modality runs as."""
from tests.support.spread_models import spread_model
from vexkd_core.checkpoint import save_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.data.preprocess import collate, preprocess

# Every box above the threshold is kept (no top-k cut), so equal scores cannot swap places.
CONFIG = load_config("tiny", ["model.lidar.sweeps=2", "model.score_threshold=0.8", "model.max_detections=500"])
NODE = {"lidar": "lidar_detector", "camera": "camera_detector", "fusion": "fusion_detector"}


def spread_checkpoints(tiny_world, folder, modalities) -> dict:
    """modality -> the .pt of its spread model, scores spread on the tiny world's first val sample."""
    dataroot, world = tiny_world
    inputs = collate([preprocess(NuScenesSource(dataroot, world.version, "val", 2).sample(0), CONFIG)[0]])
    return {modality: save_checkpoint(folder / f"{modality}.pt", spread_model(CONFIG, modality, inputs), CONFIG,
                                      modality)
            for modality in modalities}
