"""Object sizes per nuScenes category: the nuScenes class means, spread over what each class
holds."""
from __future__ import annotations

import numpy as np

# nuScenes mean sizes as (length, width, height): the devkit class statistics BEVFusion and
# mmdet3d use for their nuScenes anchors.
MEAN_SIZE_LWH = {
    "vehicle.car": (4.63, 1.96, 1.74), "vehicle.truck": (6.93, 2.51, 2.84),
    "vehicle.bus.rigid": (10.9, 2.94, 3.47), "vehicle.trailer": (12.0, 2.90, 3.87),
    "vehicle.construction": (6.37, 2.85, 3.19), "human.pedestrian.adult": (0.73, 0.67, 1.77),
    "human.pedestrian.child": (0.50, 0.48, 1.25),
    "human.pedestrian.construction_worker": (0.75, 0.70, 1.78),
    "vehicle.motorcycle": (2.11, 0.77, 1.47), "vehicle.bicycle": (1.70, 0.60, 1.28),
    "movable_object.trafficcone": (0.41, 0.41, 1.07), "movable_object.barrier": (0.50, 2.53, 0.98),
}

# Spread of (length, width, height) as coefficients of variation, and the shortest and longest
# length. What the nuScenes annotator instructions put in a class sets its spread: a truck is
# anything from a pick-up to a lorry or a semi-tractor (a 10 m truck is common), a trailer
# anything from a car's to a semi-trailer, a rigid bus a shuttle to a 12 m city bus or a
# double-decker, a barrier a concrete, metal or water barrier of any length (its width here:
# nuScenes measures a barrier's long side across its heading); cars are sedans to vans.
SIZE_SPREAD = {
    "vehicle.car": ((0.08, 0.05, 0.08), (3.4, 5.8)),
    "vehicle.truck": ((0.30, 0.05, 0.10), (4.5, 12.5)),
    "vehicle.bus.rigid": ((0.12, 0.03, 0.12), (7.0, 13.5)),
    "vehicle.trailer": ((0.35, 0.05, 0.10), (2.5, 17.0)),
    "vehicle.construction": ((0.25, 0.05, 0.10), (3.5, 9.5)),
    "human.pedestrian.adult": ((0.12, 0.05, 0.06), (0.4, 1.1)),
    "human.pedestrian.child": ((0.12, 0.05, 0.10), (0.3, 0.8)),
    "human.pedestrian.construction_worker": ((0.12, 0.05, 0.06), (0.4, 1.1)),
    "vehicle.motorcycle": ((0.08, 0.08, 0.06), (1.5, 2.7)),
    "vehicle.bicycle": ((0.06, 0.08, 0.06), (1.4, 2.0)),
    "movable_object.trafficcone": ((0.10, 0.10, 0.12), (0.25, 0.6)),
    "movable_object.barrier": ((0.15, 0.25, 0.12), (0.25, 0.9)),
}
# Long vehicles are also wider and taller: width and height follow length to these powers.
LENGTH_COUPLED = {"vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction"}
WIDTH_POWER, HEIGHT_POWER = 0.25, 0.35
MAX_WIDTH_M = 3.2  # two of the widest side by side still fit two 3.5 m lanes
# Street trees are pruned to clear the road (crowns start at 4.9 m, streetscape.py).
MAX_HEIGHT_M = 4.6


def draw_size(category: str, rng: np.random.Generator) -> np.ndarray:
    """(length, width, height) of one object: log-normal about the class mean, at most two
    standard deviations out, the length within the class's limits."""
    mean = np.asarray(MEAN_SIZE_LWH[category])
    spread, (shortest, longest) = SIZE_SPREAD[category]
    factors = np.exp(np.clip(rng.standard_normal(3), -2.0, 2.0) * spread - np.square(spread) / 2)
    size = mean * factors
    size[0] = np.clip(size[0], shortest, longest)
    if category in LENGTH_COUPLED:
        ratio = size[0] / mean[0]
        size[1:] *= (ratio ** WIDTH_POWER, ratio ** HEIGHT_POWER)
    size[1] = min(size[1], MAX_WIDTH_M)
    size[2] = min(size[2], MAX_HEIGHT_M)
    return size
