"""Everything the sensors can hit, as oriented boxes: static structures plus the actors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actors import Scenario
from .city import City
from .materials import solid_materials

STATIC_KINDS = ("building", "wall", "pole", "trunk", "foliage", "hedge", "sign", "street_box")
ACTOR_KINDS = ("car", "truck", "bus", "trailer", "construction", "pedestrian", "motorcycle",
               "motorcycle_rider", "bicycle", "bicycle_rider", "cone", "barrier")
KINDS = STATIC_KINDS + ACTOR_KINDS
KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}

_CATEGORY_KIND = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.rigid": "bus",
    "vehicle.trailer": "trailer", "vehicle.construction": "construction",
    "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle",
    "movable_object.trafficcone": "cone", "movable_object.barrier": "barrier",
}


def actor_kind(category: str, attribute: str | None) -> str:
    if category.startswith("human."):
        return "pedestrian"
    kind = _CATEGORY_KIND[category]
    return f"{kind}_rider" if attribute == "cycle.with_rider" else kind


@dataclass
class SceneSolids:
    center: np.ndarray  # (M, 3) at scene time 0
    size_lwh: np.ndarray  # (M, 3)
    yaw: np.ndarray  # (M,)
    velocity: np.ndarray  # (M, 2)
    kind: np.ndarray  # (M,) index into KINDS
    actor: np.ndarray  # (M,) index into Scenario.actors, -1 for static structures
    colors: np.ndarray  # (M, 2, 3) uint8: primary and secondary colour
    reflectance: np.ndarray  # (M,) at the LiDAR's wavelength, 0..1 (materials.py)
    retro_reading: np.ndarray  # (M,) what its retro-reflective parts read, 101..255

    def centers_at(self, t: float) -> np.ndarray:
        return self.center + np.concatenate([self.velocity * t, np.zeros((len(self.center), 1))], axis=1)

    def __len__(self) -> int:
        return len(self.center)


def scene_solids(city: City, scenario: Scenario, rng: np.random.Generator, radius_m: float = 160.0) -> SceneSolids:
    """Static structures within `radius_m` of the ego route, then every actor; their
    materials drawn from `rng`."""
    start = np.array(scenario.ego.start)
    end = np.array(scenario.ego.pose_at(scenario.duration_s)[:2])
    rows = []
    for solid in city.solids:
        xy = np.array(solid.center[:2])
        segment = end - start
        t = np.clip(np.dot(xy - start, segment) / max(segment @ segment, 1e-9), 0.0, 1.0)
        if np.linalg.norm(xy - (start + t * segment)) < radius_m:
            rows.append((solid.center, solid.size_lwh, solid.yaw, (0.0, 0.0), KIND_INDEX[solid.kind], -1,
                         (solid.color, solid.color)))
    for index, actor in enumerate(scenario.actors):
        rows.append((actor.center, actor.size_lwh, actor.yaw, actor.velocity,
                     KIND_INDEX[actor_kind(actor.category, actor.attribute)], index, actor.colors))
    columns = list(zip(*rows))
    kinds, colors = np.array(columns[4], dtype=np.int64), np.array(columns[6], dtype=np.uint8)
    reflectance, retro_reading = solid_materials([KINDS[k] for k in kinds], colors, rng)
    return SceneSolids(np.array(columns[0], dtype=np.float64), np.array(columns[1], dtype=np.float64),
                       np.array(columns[2], dtype=np.float64), np.array(columns[3], dtype=np.float64),
                       kinds, np.array(columns[5], dtype=np.int64), colors, reflectance, retro_reading)
