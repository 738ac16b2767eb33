"""A seeded street-grid city per nuScenes location: roads, lanes, markings, walkways,
car parks and static structures, as map-layer geometry plus a ground-material raster.

Everything is axis-aligned in the global (map) frame: roads run along x or y, blocks sit
between them. Singapore drives on the left, Boston on the right.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import Rect, Solid
from .streetscape import (WALKWAY_WIDTH_M, block_sides, build_frontages, furnish_kerbside, plant_interior,
                          point_on_line)

LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown",
             "singapore-hollandvillage")

LANE_WIDTH_M = 3.5
CROSSING_DEPTH_M = 4.0
STOP_LINE_DEPTH_M = 2.0
GROUND_RESOLUTION_M = 0.1
CITY_MARGIN_M = 60.0  # open land around the grid so sensors near the edge see ground

# Ground materials in the raster.
GRASS, ASPHALT, PAINT_WHITE, PAINT_YELLOW, WALKWAY, CARPARK, KERB = range(7)


@dataclass(frozen=True)
class Road:
    axis: int  # 0: runs along x (fixed y), 1: runs along y (fixed x)
    position: float  # the fixed coordinate of the centre line
    lanes_per_direction: int

    @property
    def half_width(self) -> float:
        return self.lanes_per_direction * LANE_WIDTH_M


@dataclass(frozen=True)
class LaneSegment:
    """One lane of a road between two intersections."""

    road: int  # index into City.roads
    axis: int
    position: float  # fixed coordinate of the lane centre
    direction: int  # +1 or -1 along the axis
    start: float  # along-axis extent (start < end)
    end: float
    index_from_center: int  # 0 = next to the centre line

    def ends_at(self, lo: float, hi: float) -> bool:
        """The segment runs into the junction spanning [lo, hi] along its axis."""
        return abs((self.end - lo) if self.direction > 0 else (self.start - hi)) < 1e-6

    def starts_at(self, lo: float, hi: float) -> bool:
        """The segment leaves the junction spanning [lo, hi] along its axis."""
        return abs((self.start - hi) if self.direction > 0 else (self.end - lo)) < 1e-6


@dataclass
class MapGeometry:
    """Map-expansion layers as plain geometry, written to JSON by mapjson.py."""

    road_segments: list[tuple[Rect, bool]] = field(default_factory=list)  # (rect, is_intersection)
    lanes: list[tuple[Rect, int]] = field(default_factory=list)  # (rect, road_segment index)
    drivable: list[Rect] = field(default_factory=list)
    walkways: list[tuple[Rect, Rect]] = field(default_factory=list)  # (outer, hole)
    ped_crossings: list[tuple[Rect, int]] = field(default_factory=list)  # (rect, road_segment)
    stop_lines: list[tuple[Rect, int]] = field(default_factory=list)  # (rect, ped_crossing)
    carparks: list[tuple[Rect, float]] = field(default_factory=list)  # (rect, orientation)
    road_dividers: list[tuple[tuple[float, float], tuple[float, float], int]] = field(default_factory=list)
    lane_dividers: list[tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=list)


@dataclass
class City:
    location: str
    left_hand_traffic: bool
    size: tuple[float, float]  # canvas extent (x, y) in metres
    roads: list[Road]
    lanes: list[LaneSegment]
    blocks: list[Rect]
    # (axis, fixed coordinate of the walkway's centre line, start, end, +1/-1: side facing the kerb)
    walkway_paths: list[tuple[int, float, float, float, int]]
    carparks: list[Rect]
    intersections: list[Rect]
    crossings: list[tuple[Rect, int, int]]  # (rect, road index, side: -1 before / +1 after the junction)
    solids: list[Solid]
    geometry: MapGeometry
    ground: np.ndarray  # uint8 materials, [row = y / res, col = x / res]

    def material_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rows = np.clip((y / GROUND_RESOLUTION_M).astype(np.int64), 0, self.ground.shape[0] - 1)
        cols = np.clip((x / GROUND_RESOLUTION_M).astype(np.int64), 0, self.ground.shape[1] - 1)
        outside = (x < 0) | (y < 0) | (x >= self.size[0]) | (y >= self.size[1])
        return np.where(outside, GRASS, self.ground[rows, cols])

    def crossing_lanes(self, junction: Rect, axis: int) -> list[LaneSegment]:
        """Lane segments of the road that crosses, at `junction`, a road along `axis`."""
        lanes = []
        for lane in self.lanes:
            centre_across = junction.center[1] if lane.axis == 0 else junction.center[0]
            if lane.axis != axis and abs(lane.position - centre_across) < 2 * LANE_WIDTH_M + 0.1:
                lanes.append(lane)
        return lanes


def _road_positions(rng: np.random.Generator, count: int) -> tuple[list[float], list[int]]:
    lanes = [int(rng.choice([1, 2], p=[0.45, 0.55])) for _ in range(count)]
    positions, cursor = [], CITY_MARGIN_M
    for i in range(count):
        cursor += lanes[i] * LANE_WIDTH_M
        positions.append(cursor)
        cursor += lanes[i] * LANE_WIDTH_M + (rng.uniform(65.0, 105.0) if i < count - 1 else 0.0)
    return positions, lanes


def build_city(location: str, seed: int, blocks_per_side: int = 4) -> City:
    """The city of one location; the same (location, seed) always gives the same city."""
    rng = np.random.default_rng([seed, LOCATIONS.index(location), 7])
    xs, x_lanes = _road_positions(rng, blocks_per_side + 1)
    ys, y_lanes = _road_positions(rng, blocks_per_side + 1)
    roads = [Road(1, x, n) for x, n in zip(xs, x_lanes)] + [Road(0, y, n) for y, n in zip(ys, y_lanes)]
    size = (xs[-1] + x_lanes[-1] * LANE_WIDTH_M + CITY_MARGIN_M,
            ys[-1] + y_lanes[-1] * LANE_WIDTH_M + CITY_MARGIN_M)
    builder = _CityBuilder(location, rng, roads, size)
    return builder.build()


class _CityBuilder:
    def __init__(self, location: str, rng: np.random.Generator, roads: list[Road], size):
        self.location = location
        self.rng = rng
        self.roads = roads
        self.size = size
        self.left_hand = location.startswith("singapore")
        shape = (int(np.ceil(size[1] / GROUND_RESOLUTION_M)), int(np.ceil(size[0] / GROUND_RESOLUTION_M)))
        self.ground = np.full(shape, GRASS, dtype=np.uint8)
        self.geometry = MapGeometry()
        self.lanes: list[LaneSegment] = []
        self.solids: list[Solid] = []
        self.walkway_paths: list[tuple[int, float, float, float, int]] = []
        self.carparks: list[Rect] = []
        self.intersections: list[Rect] = []
        self.crossings: list[tuple[Rect, int, int]] = []
        self.blocks: list[Rect] = []

    # -- raster helpers
    def paint(self, rect: Rect, material: int) -> None:
        r = GROUND_RESOLUTION_M
        rows = slice(max(int(round(rect.y0 / r)), 0), max(int(round(rect.y1 / r)), 0))
        cols = slice(max(int(round(rect.x0 / r)), 0), max(int(round(rect.x1 / r)), 0))
        self.ground[rows, cols] = material

    def paint_line(self, axis: int, position: float, start: float, end: float, width: float,
                   material: int, dash: tuple[float, float] | None = None) -> None:
        """A marking along `axis` centred on `position`; dashed as (paint, gap) metres."""
        pieces = [(start, end)]
        if dash is not None:
            period = dash[0] + dash[1]
            pieces = [(s, min(s + dash[0], end)) for s in np.arange(start, end, period)]
        for s, e in pieces:
            if axis == 0:
                self.paint(Rect(s, position - width / 2, e, position + width / 2), material)
            else:
                self.paint(Rect(position - width / 2, s, position + width / 2, e), material)

    @staticmethod
    def along(axis: int, fixed0: float, fixed1: float, start: float, end: float) -> Rect:
        """A rect spanning [start, end] along `axis` and [fixed0, fixed1] across it."""
        return Rect(start, fixed0, end, fixed1) if axis == 0 else Rect(fixed0, start, fixed1, end)

    # -- construction
    def build(self) -> City:
        self.lay_roads()
        for road_index in range(len(self.roads)):
            self.lay_segments(road_index)
        self.lay_blocks()
        return City(self.location, self.left_hand, self.size, self.roads, self.lanes, self.blocks,
                    self.walkway_paths, self.carparks, self.intersections, self.crossings,
                    self.solids, self.geometry, self.ground)

    def lay_roads(self) -> None:
        for road in self.roads:
            extent = self.size[road.axis]
            rect = self.along(road.axis, road.position - road.half_width,
                              road.position + road.half_width, CITY_MARGIN_M / 2, extent - CITY_MARGIN_M / 2)
            self.geometry.drivable.append(rect)
            self.paint(rect, ASPHALT)
        for cross_x in (r for r in self.roads if r.axis == 1):
            for cross_y in (r for r in self.roads if r.axis == 0):
                junction = Rect(cross_x.position - cross_x.half_width, cross_y.position - cross_y.half_width,
                                cross_x.position + cross_x.half_width, cross_y.position + cross_y.half_width)
                self.intersections.append(junction)
                self.geometry.road_segments.append((junction, True))

    def junction_spans(self, road: Road) -> list[tuple[float, float]]:
        """Along-road extents of the junctions on this road, in order."""
        crossing = [r for r in self.roads if r.axis != road.axis]
        return [(r.position - r.half_width, r.position + r.half_width) for r in crossing]

    def lay_segments(self, road_index: int) -> None:
        road = self.roads[road_index]
        spans = self.junction_spans(road)
        ends = [CITY_MARGIN_M / 2] + [v for span in spans for v in span] + [self.size[road.axis] - CITY_MARGIN_M / 2]
        for k in range(0, len(ends), 2):
            start, end = ends[k], ends[k + 1]
            segment = len(self.geometry.road_segments)
            self.geometry.road_segments.append(
                (self.along(road.axis, road.position - road.half_width, road.position + road.half_width,
                            start, end), False))
            self.lay_lanes(road_index, segment, start, end)
            self.lay_markings(road, segment, start, end, has_junction_before=k > 0,
                              has_junction_after=k + 2 < len(ends))

    def lay_lanes(self, road_index: int, segment: int, start: float, end: float) -> None:
        road = self.roads[road_index]
        for direction in (1, -1):
            # Right-hand traffic keeps +axis traffic on the negative side of the centre line
            # for roads along x; the sign flips for roads along y and for left-hand traffic.
            side = -direction if road.axis == 0 else direction
            side = -side if self.left_hand else side
            for k in range(road.lanes_per_direction):
                centre = road.position + side * (k + 0.5) * LANE_WIDTH_M
                self.lanes.append(LaneSegment(road_index, road.axis, centre, direction, start, end, k))
                lo, hi = sorted((road.position + side * k * LANE_WIDTH_M,
                                 road.position + side * (k + 1) * LANE_WIDTH_M))
                self.geometry.lanes.append((self.along(road.axis, lo, hi, start, end), segment))

    def lay_markings(self, road: Road, segment: int, start: float, end: float,
                     has_junction_before: bool, has_junction_after: bool) -> None:
        axis, centre = road.axis, road.position
        inner_start = start + (CROSSING_DEPTH_M + 1.0 + STOP_LINE_DEPTH_M if has_junction_before else 0.0)
        inner_end = end - (CROSSING_DEPTH_M + 1.0 + STOP_LINE_DEPTH_M if has_junction_after else 0.0)
        # Centre: double yellow line (a road divider).
        for offset in (-0.15, 0.15):
            self.paint_line(axis, centre + offset, inner_start, inner_end, 0.12, PAINT_YELLOW)
        self.geometry.road_dividers.append((point_on_line(axis, centre, inner_start),
                                            point_on_line(axis, centre, inner_end), segment))
        # Between lanes of one direction: dashed white (lane dividers).
        for k in range(1, road.lanes_per_direction):
            for side in (-1, 1):
                position = centre + side * k * LANE_WIDTH_M
                self.paint_line(axis, position, inner_start, inner_end, 0.15, PAINT_WHITE, dash=(3.0, 6.0))
                self.geometry.lane_dividers.append((point_on_line(axis, position, inner_start),
                                                    point_on_line(axis, position, inner_end)))
        # Crossings and stop lines at each junction end of the segment.
        road_index = self.roads.index(road)
        if has_junction_before:
            self.lay_crossing(road_index, segment, start, +1)
        if has_junction_after:
            self.lay_crossing(road_index, segment, end, -1)

    def lay_crossing(self, road_index: int, segment: int, junction_edge: float, inward: int) -> None:
        """Zebra crossing 1 m from the junction and a stop line for traffic approaching it."""
        road = self.roads[road_index]
        near = junction_edge + inward * 1.0
        far = near + inward * CROSSING_DEPTH_M
        lo, hi = road.position - road.half_width, road.position + road.half_width
        crossing = self.along(road.axis, lo, hi, min(near, far), max(near, far))
        crossing_index = len(self.geometry.ped_crossings)
        self.geometry.ped_crossings.append((crossing, segment))
        self.crossings.append((crossing, road_index, -inward))
        for stripe in np.arange(lo + 0.25, hi - 0.25, 1.0):
            self.paint(self.along(road.axis, stripe, stripe + 0.5, min(near, far), max(near, far)), PAINT_WHITE)
        # Traffic approaching the junction moves in direction -inward; it keeps to its side.
        approaching = -inward
        side = -approaching if road.axis == 0 else approaching
        side = -side if self.left_hand else side
        lane_lo, lane_hi = sorted((road.position, road.position + side * road.half_width))
        stop_far = far + inward * STOP_LINE_DEPTH_M
        stop = self.along(road.axis, lane_lo, lane_hi, min(far, stop_far), max(far, stop_far))
        self.geometry.stop_lines.append((stop, crossing_index))
        bar = far + inward * 0.6
        self.paint(self.along(road.axis, lane_lo, lane_hi, min(far + inward * 0.2, bar), max(far + inward * 0.2, bar)),
                   PAINT_WHITE)

    def lay_blocks(self) -> None:
        verticals = sorted((r for r in self.roads if r.axis == 1), key=lambda r: r.position)
        horizontals = sorted((r for r in self.roads if r.axis == 0), key=lambda r: r.position)
        for left, right in zip(verticals, verticals[1:]):
            for bottom, top in zip(horizontals, horizontals[1:]):
                block = Rect(left.position + left.half_width, bottom.position + bottom.half_width,
                             right.position - right.half_width, top.position - top.half_width)
                self.blocks.append(block)
                self.lay_block(block)

    def lay_block(self, block: Rect) -> None:
        inner = block.shrink(WALKWAY_WIDTH_M)
        self.geometry.walkways.append((block, inner))
        self.paint(block, KERB)
        self.paint(block.shrink(0.25), WALKWAY)
        self.paint(inner, GRASS)
        # Walkway paths (for pedestrians) along each side, then what stands along and inside the block.
        for axis, fixed, start, end, kerb in block_sides(block, WALKWAY_WIDTH_M / 2):
            self.walkway_paths.append((axis, fixed, start + 1.0, end - 1.0, kerb))
        self.solids += furnish_kerbside(block, self.rng)
        if self.rng.random() < 0.35:
            self.lay_carpark(inner)
        else:
            self.solids += build_frontages(inner, self.location, self.rng) + plant_interior(inner, self.rng)

    def lay_carpark(self, inner: Rect) -> None:
        self.carparks.append(inner)
        self.geometry.carparks.append((inner, 0.0))
        self.geometry.drivable.append(inner)
        self.paint(inner, CARPARK)
        # Bays: rows along x, 2.5 m wide, 5 m deep, with white separators.
        for y in np.arange(inner.y0 + 1.0, inner.y1 - 5.0, 12.0):
            for x in np.arange(inner.x0 + 1.0, inner.x1 - 1.0, 2.5):
                self.paint_line(1, x, y, y + 5.0, 0.12, PAINT_WHITE)
