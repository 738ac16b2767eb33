"""What stands along and inside a city block: buildings, hedges, walls, street lights,
trees, signs and kerbside clutter, as static boxes (shapes.Solid).

The walkway itself stays clear for the actors: furniture keeps to a line near the kerb,
narrow enough for pedestrians to pass (actors.py walks them 1.25 m and more from the kerb),
anything above head height keeps above 2.2 m, and anything over the road above the tallest
vehicle.
"""
from __future__ import annotations

import numpy as np

from .shapes import Rect, Solid

WALKWAY_WIDTH_M = 3.5
WALKWAY_HEIGHT_M = 0.15  # raised above the road
KERBSIDE_OFFSET_M = 0.7  # the street furniture's line, from the kerb
KERBSIDE_KINDS = ("pole", "trunk", "street_box")  # what stands on the walkway at people's height
STOREY_M = 3.5
# Storeys of the buildings along a block, by location, from what stands there: Boston's
# Seaport and Singapore's one-north are districts of mid- and high-rise offices, Queenstown a
# housing estate of blocks up to 40 storeys, Holland Village low-rise shophouses.
STOREYS = {"boston-seaport": (3, 20), "singapore-onenorth": (4, 20), "singapore-queenstown": (4, 40),
           "singapore-hollandvillage": (2, 6)}
# Street trees are pruned to clear the tallest vehicle over the road (sizes.MAX_HEIGHT_M);
# their crowns are 4-8 m across and 3-6 m deep, as grown urban street trees are.
STREET_CROWN_BASE_M = (4.9, 6.0)
PARK_CROWN_BASE_M = (2.0, 3.5)
BUILDING_DEPTH_M = (10.0, 18.0)
SIGN_COLORS = ((30, 80, 170), (200, 30, 30), (235, 235, 235), (20, 110, 60))
BOX_COLORS = ((40, 70, 50), (120, 120, 125), (230, 120, 30), (60, 60, 65))


def point_on_line(axis: int, fixed: float, along: float) -> tuple[float, float]:
    """The point `along` a line parallel to `axis` (0: x, 1: y) at `fixed` across it."""
    return (along, fixed) if axis == 0 else (fixed, along)


def block_sides(block: Rect, offset: float) -> tuple[tuple[int, float, float, float, int], ...]:
    """The four lines `offset` inside a block's kerb: (axis, fixed coordinate, start, end,
    +1/-1 the way across towards the road)."""
    return ((0, block.y0 + offset, block.x0, block.x1, -1), (0, block.y1 - offset, block.x0, block.x1, 1),
            (1, block.x0 + offset, block.y0, block.y1, -1), (1, block.x1 - offset, block.y0, block.y1, 1))


def _box(kind: str, axis: int, fixed: float, along: float, base: float, along_across_height, color,
         shift_across: float = 0.0, yaw: float = 0.0) -> Solid:
    """A box standing at `base` height on a line, sized (along the line, across it, height)."""
    length, width, height = along_across_height
    x, y = point_on_line(axis, fixed + shift_across, along)
    size = (length, width, height) if axis == 0 else (width, length, height)
    return Solid(kind, (x, y, base + height / 2), size, yaw, tuple(int(c) for c in color))


def _green(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers([30, 90, 25], [60, 140, 55]))


def tree(rng: np.random.Generator, axis: int, fixed: float, along: float, ground: float,
         crown_base_m: tuple[float, float], crown_across_m: tuple[float, float]) -> list[Solid]:
    """A trunk from `ground` up to the crown's base and a crown over it."""
    base = rng.uniform(*crown_base_m)
    across, depth = rng.uniform(*crown_across_m), rng.uniform(3.0, 6.0)
    trunk = _box("trunk", axis, fixed, along, ground, (0.3, 0.3, base), (92, 64, 40))
    crown = _box("foliage", axis, fixed, along, ground + base, (across, across, depth), _green(rng),
                 yaw=float(rng.uniform(0, 1.5)))
    return [trunk, crown]


def street_light(rng: np.random.Generator, axis: int, fixed: float, along: float, toward_road: int) -> list[Solid]:
    """A 7-10 m pole with its arm reaching 1.5 m out over the road."""
    height = rng.uniform(7.0, 10.0)
    pole = _box("pole", axis, fixed, along, WALKWAY_HEIGHT_M, (0.25, 0.25, height), (120, 120, 125))
    arm = _box("pole", axis, fixed, along, WALKWAY_HEIGHT_M + height - 0.15, (0.15, 2.2, 0.15), (120, 120, 125),
               shift_across=toward_road * 1.1)
    return [pole, arm]


def clutter(rng: np.random.Generator, axis: int, fixed: float, along: float) -> list[Solid]:
    """One kerbside item: a sign facing the traffic, a bin, a bollard or a utility cabinet."""
    item = int(rng.integers(4))
    if item == 0:
        plate = rng.uniform(0.5, 0.8)
        post = _box("pole", axis, fixed, along, WALKWAY_HEIGHT_M, (0.08, 0.08, 2.3 + plate), (150, 150, 150))
        sign = _box("sign", axis, fixed, along + 0.06, WALKWAY_HEIGHT_M + 2.3, (0.04, plate, plate),
                    SIGN_COLORS[int(rng.integers(len(SIGN_COLORS)))])
        return [post, sign]
    along_across_height = ((0.45, 0.3, 1.0), (0.2, 0.2, 0.9), (0.6, 0.3, 1.3))[item - 1]
    return [_box("street_box", axis, fixed, along, WALKWAY_HEIGHT_M, along_across_height,
                 BOX_COLORS[int(rng.integers(len(BOX_COLORS)))])]


def furnish_kerbside(block: Rect, rng: np.random.Generator) -> list[Solid]:
    """Street lights and trees every 14-22 m along the kerb, kerbside clutter between them."""
    solids: list[Solid] = []
    for axis, fixed, start, end, toward_road in block_sides(block, KERBSIDE_OFFSET_M):
        stations = np.arange(start + 6.0, end - 6.0, rng.uniform(14.0, 22.0))
        for along in stations:
            solids += street_light(rng, axis, fixed, along, toward_road) if rng.random() < 0.5 else \
                tree(rng, axis, fixed, along, WALKWAY_HEIGHT_M, STREET_CROWN_BASE_M, (4.0, 8.0))
        for along in (stations[:-1] + stations[1:]) / 2:
            if rng.random() < 0.7:
                solids += clutter(rng, axis, fixed, along)
    return solids


def build_frontages(inner: Rect, location: str, rng: np.random.Generator) -> list[Solid]:
    """Buildings along the inside of a block's walkways (corners open), with walls and hedges
    where there is none."""
    lowest, highest = STOREYS[location]
    solids: list[Solid] = []
    for axis, edge, inward in ((0, inner.y0, 1), (0, inner.y1, -1), (1, inner.x0, 1), (1, inner.x1, -1)):
        start, end = (inner.x0, inner.x1) if axis == 0 else (inner.y0, inner.y1)
        cursor, end = start + BUILDING_DEPTH_M[1], end - BUILDING_DEPTH_M[1]
        while cursor < end - 6.0:
            frontage = min(rng.uniform(10.0, 28.0), end - cursor)
            middle = cursor + frontage / 2
            kind = rng.random()
            if kind < 0.85:
                # Most blocks are lower than the district's tallest: storeys skewed low.
                storeys = lowest + int((highest - lowest + 1) * rng.random() ** 2)
                depth = rng.uniform(*BUILDING_DEPTH_M)
                solids.append(_box("building", axis, edge, middle, 0.0, (frontage, depth, storeys * STOREY_M),
                                   rng.integers(90, 215, 3), shift_across=inward * depth / 2))
            elif kind < 0.925:
                solids.append(_box("wall", axis, edge, middle, 0.0, (frontage, 0.4, 1.6), (150, 90, 70),
                                   shift_across=inward * 0.3))
            else:
                depth = rng.uniform(0.8, 1.2)
                solids.append(_box("hedge", axis, edge, middle, 0.0, (frontage, depth, rng.uniform(0.8, 1.6)),
                                   _green(rng), shift_across=inward * (depth / 2 + 0.1)))
            cursor += frontage + rng.uniform(1.0, 6.0)
    return solids


def plant_interior(inner: Rect, rng: np.random.Generator) -> list[Solid]:
    """Trees on the open ground behind a block's buildings, about every 14 m."""
    park = inner.shrink(BUILDING_DEPTH_M[1] + 2.0)
    solids: list[Solid] = []
    for x in np.arange(park.x0 + 4.0, park.x1 - 4.0, 14.0):
        for y in np.arange(park.y0 + 4.0, park.y1 - 4.0, 14.0):
            if rng.random() < 0.5:
                solids += tree(rng, 0, y + rng.uniform(-3.0, 3.0), x + rng.uniform(-3.0, 3.0), 0.0,
                               PARK_CROWN_BASE_M, (4.0, 9.0))
    return solids
