"""What the LiDAR reads off each surface: the HDL-32E's calibrated reflectivity.

The HDL-32E reports reflectivity calibrated for range and laser power (Velodyne HDL-32E
user's manual, "calibrated reflectivity"), and nuScenes' intensity channel is that value:
diffuse reflectors read 0..100, their reflectance in per cent at the laser's 905 nm (0 black,
100 white); retro-reflectors read 101..255 (255 an ideal one). So road paint and pale
concrete read brighter than asphalt, licence plates, cone collars and sign faces (retro-
reflective sheeting) brightest of all, dark paint low. Reflectances below are typical
near-infrared ones of each material; leaves reflect 905 nm well, but a beam fills only part
of its footprint with them, so vegetation reads low.
"""
from __future__ import annotations

import numpy as np

from .city import ASPHALT, CARPARK, GRASS, KERB, PAINT_WHITE, PAINT_YELLOW, WALKWAY

GROUND_REFLECTANCE = np.zeros(7)
GROUND_REFLECTANCE[[GRASS, ASPHALT, PAINT_WHITE, PAINT_YELLOW, WALKWAY, CARPARK, KERB]] = \
    (0.25, 0.08, 0.55, 0.45, 0.30, 0.10, 0.35)
EGO_BODY_REFLECTANCE = 0.7  # the nuScenes Renault Zoes are painted white
# (low, high) reflectance, drawn per object, of what is not painted in its camera colour.
REFLECTANCE_BY_KIND = {
    "building": (0.10, 0.40),  # glass curtain walls to pale concrete
    "wall": (0.20, 0.40),  # brick, concrete
    "pole": (0.15, 0.30),  # galvanised or painted steel
    "trunk": (0.20, 0.30),  # bark
    "foliage": (0.40, 0.50), "hedge": (0.40, 0.50),  # leaves, before PARTIAL_FILL
    "sign": (0.50, 0.70),  # the sheeting's edges; its face is retro-reflective
    "street_box": (0.10, 0.45),  # painted metal and plastic
    # Skin and clothes: most dyes are transparent at 905 nm, so textiles read bright unless
    # dyed with carbon black.
    "pedestrian": (0.25, 0.65), "motorcycle_rider": (0.25, 0.60), "bicycle_rider": (0.25, 0.60),
    "cone": (0.40, 0.50),  # orange PVC
    "barrier": (0.15, 0.40),  # concrete, painted metal or water-filled plastic (nuScenes' barriers)
}
PAINTED_KINDS = ("car", "truck", "bus", "trailer", "construction", "motorcycle", "bicycle")
POROUS_KINDS = ("foliage", "hedge")
PARTIAL_FILL = (0.1, 0.6)  # share of a beam's footprint leaves fill
GLASS_REFLECTANCE = 0.05  # windows pass or mirror the beam away
RETRO_RANGE = (150.0, 250.0)  # what an object's retro-reflective parts read, drawn per object


def paint_reflectance(rgb: np.ndarray) -> np.ndarray:
    """Near-infrared reflectance of paint from its visible colour: red and yellow pigments
    reflect 905 nm strongly, carbon black absorbs it, so it follows red more than blue."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return 0.05 + 0.65 * (0.6 * rgb[..., 0] + 0.3 * rgb[..., 1] + 0.1 * rgb[..., 2])


def solid_materials(kinds: list[str], colors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(reflectance, retro-reflector reading) of each solid; `colors` (M, 2, 3) their camera
    colours, the first the body's paint."""
    reflectance = np.empty(len(kinds))
    for i, kind in enumerate(kinds):
        if kind in PAINTED_KINDS:
            reflectance[i] = paint_reflectance(colors[i, 0]) * rng.lognormal(0.0, 0.15)
        else:
            reflectance[i] = rng.uniform(*REFLECTANCE_BY_KIND[kind])
    return np.clip(reflectance, 0.02, 0.95), rng.uniform(*RETRO_RANGE, len(kinds))


def surface_parts(kind: np.ndarray, local: np.ndarray, face_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(retro-reflective, glass) per hit on a solid of `kind` (names), from where it struck:
    `local` the hit in the box's frame scaled to -1..1, `face_axis` the box axis of the face
    (0 front/back, 1 sides, 2 top/bottom). The parts are where the cameras draw them."""
    up = (local[:, 2] + 1.0) / 2.0
    on_ends, on_sides = face_axis == 0, face_axis == 1
    plate = np.isin(kind, ("car", "truck", "bus", "trailer", "construction", "motorcycle")) & on_ends & \
        (up > 0.2) & (up < 0.35) & (np.abs(local[:, 1]) < 0.3)
    collar = (kind == "cone") & (up > 0.45) & (up < 0.62)
    retro = (kind == "sign") | plate | collar
    glass = np.isin(kind, ("car", "bus")) & (on_ends | on_sides) & (up > 0.55) & (up < 0.85)
    return retro, glass


def return_intensity(reflectance: np.ndarray, retro_reading: np.ndarray, cosine: np.ndarray, gain: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Calibrated reflectivity of returns: diffuse ones 0..100 from their reflectance (rough
    surfaces still return half at grazing incidence), retro-reflective ones (retro_reading > 0)
    101..255; `gain` is the unit's calibration in this scene; each return has speckle."""
    speckle = rng.lognormal(0.0, 0.25, len(reflectance))
    diffuse = np.clip(100.0 * reflectance * gain * (0.5 + 0.5 * cosine) * speckle, 0.0, 100.0)
    retro = np.clip(retro_reading * gain * np.sqrt(speckle), 101.0, 255.0)
    return np.where(retro_reading > 0, retro, diffuse)
