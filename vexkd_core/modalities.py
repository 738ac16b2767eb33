"""The model's configurations by the sensors they read, importable without torch (the launch
file, the nodes and the runtime ask it; models.vexkd builds a model's encoders from it).

    fusion: lidar + camera (the teacher)    lidar: lidar    camera: camera (the students)
"""
from __future__ import annotations

MODALITIES = ("fusion", "lidar", "camera")
# The sensors each modality's model reads, which are its encoders, in the order they are
# built: the random initialisation draws in this order, so the same seed gives the same weights.
SENSORS = {"fusion": ("lidar", "camera"), "lidar": ("lidar",), "camera": ("camera",)}


def sensors(modality: str) -> tuple[str, ...]:
    """SENSORS[modality]; a ValueError naming the modalities for anything else."""
    if modality not in SENSORS:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not '{modality}'")
    return SENSORS[modality]


def reads(modality: str, sensor: str) -> bool:
    """Whether a model of `modality` reads `sensor` ("lidar" or "camera"), that is, has its encoder."""
    return sensor in sensors(modality)
