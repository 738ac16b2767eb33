"""Populate one scene of a city: the ego route and every annotated object with its track.

Objects move in straight lines at constant velocity. Collisions are avoided by
construction: each lane carries one flow at one speed, crossing traffic waits at stop
lines, pedestrians keep to walkway sub-lanes. Every scene holds all 10 detection classes
near the ego route, inside the nuScenes evaluation ranges.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .city import CITY_MARGIN_M, LANE_WIDTH_M, STOP_LINE_DEPTH_M, City, LaneSegment
from .conditions import LIGHTINGS, Lighting
from .shapes import Rect
from .sizes import draw_size
from .streetscape import KERBSIDE_KINDS, WALKWAY_HEIGHT_M, point_on_line

# Across a 3.5 m walkway, from its centre line towards the kerb (+) or the buildings (-):
# street furniture at +1.05, parked cycles at +1.3, two walking sub-lanes at +-0.5,
# people standing or sitting at -1.3.
WALKING_OFFSETS = ((0.5, 1), (-0.5, -1))  # (offset, walking direction along the path)
PARKED_CYCLE_OFFSET = 1.3
STANDING_OFFSET = -1.3

BODY_COLORS = [(200, 30, 35), (235, 235, 235), (25, 25, 30), (40, 70, 160), (150, 150, 155),
               (90, 110, 60), (215, 170, 40), (110, 20, 40), (60, 140, 170)]
CONSTRUCTION_YELLOW = (235, 170, 20)
CLOTHES = [(30, 30, 40), (200, 50, 50), (40, 90, 170), (220, 200, 60), (235, 235, 235),
           (60, 120, 60), (120, 70, 160), (90, 60, 40)]


@dataclass
class Actor:
    category: str
    attribute: str | None
    center: np.ndarray  # (3,) at scene time 0
    size_lwh: np.ndarray  # (3,)
    yaw: float
    velocity: np.ndarray  # (2,) m/s
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]

    def center_at(self, t: float) -> np.ndarray:
        return self.center + np.r_[self.velocity * t, 0.0]


@dataclass(frozen=True)
class EgoRoute:
    start: tuple[float, float]
    yaw: float
    speed: float

    def pose_at(self, t: float) -> tuple[float, float, float]:
        return (self.start[0] + np.cos(self.yaw) * self.speed * t,
                self.start[1] + np.sin(self.yaw) * self.speed * t, self.yaw)


@dataclass
class Scenario:
    ego: EgoRoute
    actors: list[Actor]
    lighting: Lighting
    duration_s: float
    density: str
    occupied: list[Rect] = field(default_factory=list)


def _unit(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw), np.sin(yaw)])


def _lane_yaw(axis: int, direction: int) -> float:
    return (0.0 if direction > 0 else np.pi) if axis == 0 else (np.pi / 2 if direction > 0 else -np.pi / 2)


def _lane_point(lane: LaneSegment, along: float) -> tuple[float, float]:
    return point_on_line(lane.axis, lane.position, along)


class _Placer:
    """Every actor of the scene, each with its drawn size and colours; a static one claims its
    footprint and is left out where it would overlap one placed before."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.actors: list[Actor] = []
        self.occupied: list[Rect] = []

    def size(self, category: str, height: float | None = None) -> np.ndarray:
        size = draw_size(category, self.rng)
        if height is not None:
            size[2] = height * self.rng.uniform(0.95, 1.05)
        return size

    def colors(self, category: str) -> tuple:
        palette = CLOTHES if category.startswith("human") else BODY_COLORS
        first, second = self.rng.choice(len(palette), 2, replace=False)
        if category == "vehicle.construction":  # construction plant is yellow, whatever its trim
            return CONSTRUCTION_YELLOW, tuple(palette[second])
        return tuple(palette[first]), tuple(palette[second])

    def add(self, category: str, attribute: str | None, xy, yaw: float, speed: float = 0.0,
            ground: float = 0.0, size: np.ndarray | None = None, static: bool = True) -> Actor | None:
        size = self.size(category) if size is None else size
        footprint = self.footprint(xy, yaw, size)
        if static and any(self.overlaps(footprint, other) for other in self.occupied):
            return None
        if static:
            self.occupied.append(footprint)
        actor = Actor(category, attribute, np.array([xy[0], xy[1], ground + size[2] / 2]), size,
                      float(np.arctan2(np.sin(yaw), np.cos(yaw))), _unit(yaw) * speed, self.colors(category))
        self.actors.append(actor)
        return actor

    @staticmethod
    def footprint(xy, yaw: float, size: np.ndarray) -> Rect:
        c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
        half_x = (size[0] * c + size[1] * s) / 2 + 0.3
        half_y = (size[0] * s + size[1] * c) / 2 + 0.3
        return Rect(xy[0] - half_x, xy[1] - half_y, xy[0] + half_x, xy[1] + half_y)

    @staticmethod
    def overlaps(a: Rect, b: Rect) -> bool:
        return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _choose_ego(city: City, rng: np.random.Generator, duration_s: float) -> tuple[EgoRoute, LaneSegment, Rect]:
    """A lane and speed such that the ego passes a junction mid-scene (or waits at its stop
    line), so crossing traffic, crossings and the work zone are near: (route, lane, junction)."""
    while True:
        lane = city.lanes[rng.integers(len(city.lanes))]
        junctions = [j for j in city.intersections
                     if (j.y0 <= lane.position <= j.y1 if lane.axis == 0 else j.x0 <= lane.position <= j.x1)]
        junction = junctions[rng.integers(len(junctions))]
        lo, hi = (junction.x0, junction.x1) if lane.axis == 0 else (junction.y0, junction.y1)
        speed = 0.0 if rng.random() < 0.2 else float(rng.uniform(5.0, 12.0))
        travel = speed * duration_s
        if speed == 0.0:  # waiting behind the stop line of the approach
            entry = lo if lane.direction > 0 else hi
            along = entry - lane.direction * (1.0 + 4.0 + STOP_LINE_DEPTH_M + 3.0)
        else:
            along = (lo + hi) / 2 - lane.direction * (travel / 2 + rng.uniform(-8.0, 8.0))
        end = along + lane.direction * travel
        extent = city.size[lane.axis]
        if min(along, end) > CITY_MARGIN_M + 30.0 and max(along, end) < extent - CITY_MARGIN_M - 30.0:
            return EgoRoute(_lane_point(lane, along), _lane_yaw(lane.axis, lane.direction), speed), lane, junction


class _RoadTraffic:
    """On the carriageways at the ego's junction: flows and queues on the ego's road and the
    crossing one, people on the zebra crossings, and a work zone closing one approach lane."""

    def __init__(self, placer: _Placer, city: City, ego: EgoRoute, ego_lane: LaneSegment, junction: Rect,
                 duration_s: float):
        self.placer, self.rng, self.city, self.duration = placer, placer.rng, city, duration_s
        self.ego, self.ego_lane, self.junction = ego, ego_lane, junction

    def lane_flow(self, lane: LaneSegment, speed: float, categories: list[str], start: float,
                  length: float) -> None:
        """Vehicles in a row along the lane from `start` downstream, all at the same speed."""
        self._row(lane, speed, categories, start, length, lane.direction)

    def queue(self, lane: LaneSegment, categories: list[str], front: float, length: float) -> None:
        """Stopped vehicles from `front` (a stop line) back upstream."""
        self._row(lane, 0.0, categories, front, length, -lane.direction)

    def _row(self, lane: LaneSegment, speed: float, categories: list[str], start: float, length: float,
             step_direction: int) -> None:
        yaw = _lane_yaw(lane.axis, lane.direction)
        attribute = "vehicle.moving" if speed > 0 else "vehicle.stopped"
        if step_direction != lane.direction:  # laid upstream: a towed trailer comes before its tractor
            categories = [c for c in categories if c != "vehicle.trailer"]
        cursor = start
        for slot, category in enumerate(categories):
            size = self.placer.size(category)
            cursor += step_direction * size[0] / 2
            if abs(cursor - start) > length:
                return
            rider = "cycle.with_rider" if category in ("vehicle.bicycle", "vehicle.motorcycle") else None
            if rider:
                size[2] = self.rng.uniform(1.55, 1.75)
            self.placer.add(category, rider or attribute, _lane_point(lane, cursor), yaw, speed, size=size,
                            static=False)
            # A trailer follows right behind the vehicle before it: it is being towed.
            next_is_trailer = slot + 1 < len(categories) and categories[slot + 1] == "vehicle.trailer"
            gap = 0.6 if next_is_trailer else self.rng.uniform(5.0, 14.0) if speed > 0 else self.rng.uniform(1.5, 3.5)
            cursor += step_direction * (size[0] / 2 + gap)

    def random_vehicles(self, count: int) -> list[str]:
        choices = ["vehicle.car"] * 10 + ["vehicle.truck", "vehicle.bus.rigid", "vehicle.motorcycle"]
        return [str(self.rng.choice(choices)) for _ in range(count)]

    def ego_road_traffic(self, density: float) -> None:
        ego_lane, ego_along = self.ego_lane, self.ego.start[self.ego_lane.axis]
        road_lanes = {(l.position, l.direction): l for l in self.city.lanes if l.road == ego_lane.road}
        lo, hi = (self.junction.x0, self.junction.x1) if ego_lane.axis == 0 else (self.junction.y0, self.junction.y1)
        for lane in road_lanes.values():
            ego_lane_here = lane.position == ego_lane.position
            if self.ego.speed == 0.0:
                # Red for the ego's road: both directions queue at their stop lines.
                entry = lo if lane.direction > 0 else hi
                front = entry - lane.direction * (1.0 + 4.0 + STOP_LINE_DEPTH_M + 0.5)
                if ego_lane_here:  # the ego is first in its queue; others wait behind it
                    front = ego_along - lane.direction * (3.0 + self.rng.uniform(1.5, 3.5))
                self.queue(lane, self.random_vehicles(int(1 + density * 4)), front, 50.0)
                continue
            if ego_lane_here:
                if self.rng.random() < 0.5:  # a leader at the ego's speed keeps its distance
                    gap = self.rng.uniform(12.0, 25.0)
                    self.lane_flow(lane, self.ego.speed, ["vehicle.car"], ego_along + lane.direction * gap, 1.0)
                continue
            speed = float(self.rng.uniform(5.0, 13.0))
            relative = abs(speed * lane.direction - self.ego.speed * ego_lane.direction) * self.duration
            # Start upstream so the flow passes the ego while the scene runs.
            start = ego_along - lane.direction * (relative * 0.6 + 30.0)
            opposite = lane.direction != ego_lane.direction
            categories = (["vehicle.bus.rigid", "vehicle.car", "vehicle.truck", "vehicle.trailer"]
                          if opposite and lane.index_from_center == 0 else [])
            categories += self.random_vehicles(int(2 + density * 6))
            self.lane_flow(lane, speed, categories, start, relative + 90.0)

    def crossing_traffic(self, work_zone_lane: LaneSegment) -> None:
        """The crossing road: queues wait at the stop lines, departing traffic drives away."""
        for lane in self.city.crossing_lanes(self.junction, self.ego_lane.axis):
            lo, hi = (self.junction.x0, self.junction.x1) if lane.axis == 0 else (self.junction.y0, self.junction.y1)
            if lane.ends_at(lo, hi):
                if lane != work_zone_lane:
                    entry = lo if lane.direction > 0 else hi
                    stop_at = entry - lane.direction * (1.0 + 4.0 + STOP_LINE_DEPTH_M + 0.5)
                    self.queue(lane, self.random_vehicles(int(self.rng.integers(1, 4))), stop_at, 45.0)
            elif lane.starts_at(lo, hi):
                exit_ = hi if lane.direction > 0 else lo
                heavy = ["vehicle.bus.rigid", "vehicle.car", "vehicle.truck", "vehicle.trailer"] \
                    if self.ego.speed == 0.0 and lane.index_from_center == 0 else []
                self.lane_flow(lane, float(self.rng.uniform(4.0, 10.0)), heavy + self.random_vehicles(3),
                               exit_ + lane.direction * 12.0, 80.0)

    def crossing_pedestrians(self) -> None:
        """People on the zebra crossings of the crossing road, where traffic waits."""
        for crossing, road, _ in self.city.crossings:
            if self.city.roads[road].axis == self.ego_lane.axis:
                continue
            if np.hypot(*np.subtract(crossing.center, self.junction.center)) > 25.0:
                continue
            across = self.ego_lane.axis  # people walk across the crossing road
            # One direction and speed per crossing, spaced at the start: nobody meets.
            direction, speed = (1 if self.rng.random() < 0.5 else -1), float(self.rng.uniform(1.0, 1.5))
            lo, hi = (crossing.x0, crossing.x1) if across == 0 else (crossing.y0, crossing.y1)
            width_lo, width_hi = (crossing.y0, crossing.y1) if across == 0 else (crossing.x0, crossing.x1)
            walked = speed * self.duration
            first = lo + 0.5 + (walked if direction < 0 else 0.0)
            last = hi - 0.5 - (walked if direction > 0 else 0.0)  # the walk ends on the crossing
            count = int(self.rng.integers(0, 3)) if last > first else 0
            for along in np.linspace(first, last, max(count, 1))[:count]:
                sideways = self.rng.uniform(width_lo + 0.6, width_hi - 0.6)
                point = (along, sideways) if across == 0 else (sideways, along)
                self.placer.add("human.pedestrian.adult", "pedestrian.moving", point, _lane_yaw(across, direction),
                                speed, static=False)

    def work_zone(self, lane: LaneSegment) -> None:
        """A closed approach lane: cones, barriers, a construction vehicle and workers."""
        lo, hi = (self.junction.x0, self.junction.x1) if lane.axis == 0 else (self.junction.y0, self.junction.y1)
        begin = (lo if lane.direction > 0 else hi) - lane.direction * 9.0
        yaw = _lane_yaw(lane.axis, lane.direction)
        edge = LANE_WIDTH_M / 2 - 0.3
        length = 24.0
        middle = begin - lane.direction * length / 2
        vehicle = self.placer.size("vehicle.construction")
        self.placer.add("vehicle.construction", "vehicle.parked", _lane_point(lane, middle), yaw, size=vehicle)
        for step in np.arange(0.0, length, 3.0):
            along = begin - lane.direction * step
            if abs(along - middle) < vehicle[0] / 2 + 1.2:
                continue  # no cones alongside the vehicle
            for side in (-1, 1):
                point = _lane_point(lane, along)
                offset = np.array([0.0, side * edge]) if lane.axis == 0 else np.array([side * edge, 0.0])
                self.placer.add("movable_object.trafficcone", None, np.add(point, offset), 0.0)
        for along in (begin + lane.direction * 2.0, begin - lane.direction * (length + 1.0)):
            self.placer.add("movable_object.barrier", None, _lane_point(lane, along), yaw)
        for shift in (-7.0, 7.0):
            self.placer.add("human.pedestrian.construction_worker", "pedestrian.standing",
                            _lane_point(lane, middle + shift), float(self.rng.uniform(-np.pi, np.pi)))


class _OffRoad:
    """Beside the ego's route, off the carriageway: people walking or standing on the walkways,
    cycles parked at the kerb, cars and trucks in the car parks."""

    def __init__(self, placer: _Placer, city: City, ego: EgoRoute, duration_s: float):
        self.placer, self.rng, self.city, self.ego, self.duration = placer, placer.rng, city, ego, duration_s

    def near_route(self, xy, radius: float) -> bool:
        start = np.array(self.ego.start)
        end = np.array(self.ego.pose_at(self.duration)[:2])
        segment = end - start
        t = np.clip(np.dot(np.asarray(xy) - start, segment) / max(segment @ segment, 1e-9), 0, 1)
        return float(np.linalg.norm(np.asarray(xy) - (start + t * segment))) < radius

    def pedestrians_and_cycles(self, density: float) -> None:
        for axis, fixed, start, end, kerb in self.city.walkway_paths:
            mid = ((start + end) / 2, fixed) if axis == 0 else (fixed, (start + end) / 2)
            if not self.near_route(mid, 60.0):
                continue
            across = lambda offset: fixed + kerb * offset  # noqa: E731
            for offset, direction in WALKING_OFFSETS:
                speed = float(self.rng.uniform(1.0, 1.6))  # one speed per sub-lane: nobody overtakes
                walked = speed * self.duration
                # The whole walk stays on this side of the block, clear of the corners.
                first, last = start + 3.0 + (walked if direction < 0 else 0.0), end - 3.0 - (walked if direction > 0 else 0.0)
                cursor = first + self.rng.uniform(0, 8)
                while cursor < last:
                    if self.rng.random() < 0.15 + 0.35 * density:
                        point = (cursor, across(offset)) if axis == 0 else (across(offset), cursor)
                        child = self.rng.random() < 0.15
                        category = "human.pedestrian.child" if child else "human.pedestrian.adult"
                        self.placer.add(category, "pedestrian.moving", point, _lane_yaw(axis, direction), speed,
                                        ground=WALKWAY_HEIGHT_M, static=False)
                    cursor += self.rng.uniform(8.0, 20.0)
            for along in self.rng.uniform(start, end, int(self.rng.integers(0, 3))):
                point = (along, across(STANDING_OFFSET)) if axis == 0 else (across(STANDING_OFFSET), along)
                attribute = "pedestrian.sitting_lying_down" if self.rng.random() < 0.15 else "pedestrian.standing"
                size = self.placer.size("human.pedestrian.adult", 1.1 if attribute.endswith("down") else None)
                size[:2] = min(size[:2])  # turning on the spot keeps a standing person off the walking lanes
                self.placer.add("human.pedestrian.adult", attribute, point, float(self.rng.uniform(-np.pi, np.pi)),
                                ground=WALKWAY_HEIGHT_M, size=size)

    def parked_cycles(self, near_xy, count: int) -> None:
        """Cycles without riders along the kerb of the walkways nearest to `near_xy`."""
        paths = sorted(self.city.walkway_paths,
                       key=lambda p: np.hypot(*np.subtract(self._path_point(p, near_xy), near_xy)))
        placed = 0
        for path in paths[:4]:
            axis, fixed, start, end, kerb = path
            line = fixed + kerb * PARKED_CYCLE_OFFSET
            base = self._path_point(path, near_xy)[axis]
            for along in base + self.rng.uniform(-25.0, 25.0, 12):
                if placed >= count or not start < along < end:
                    continue
                category = "vehicle.bicycle" if placed % 2 == 0 else "vehicle.motorcycle"
                point = (along, line) if axis == 0 else (line, along)
                size = self.placer.size(category, 1.1 if category == "vehicle.bicycle" else 1.2)
                clear = all(np.hypot(point[0] - s.center[0], point[1] - s.center[1])
                            > size[0] / 2 + max(s.size_lwh[:2]) / 2 + 0.2
                            for s in self.city.solids if s.kind in KERBSIDE_KINDS)
                if clear and self.placer.add(category, "cycle.without_rider", point, _lane_yaw(axis, 1),
                                             ground=WALKWAY_HEIGHT_M, size=size) is not None:
                    placed += 1

    @staticmethod
    def _path_point(path, xy) -> tuple[float, float]:
        axis, fixed, start, end, _ = path
        along = float(np.clip(xy[axis], start, end))
        return (along, fixed) if axis == 0 else (fixed, along)

    def carpark_vehicles(self) -> None:
        for lot in self.city.carparks:
            if not self.near_route(lot.center, 60.0):
                continue
            for y in np.arange(lot.y0 + 1.0, lot.y1 - 5.0, 12.0):
                for x in np.arange(lot.x0 + 2.25, lot.x1 - 1.0, 2.5):
                    if self.rng.random() < 0.3:
                        category = "vehicle.car" if self.rng.random() < 0.9 else "vehicle.truck"
                        size = self.placer.size(category)
                        if size[0] > 5.4 or size[1] > 2.3:
                            size[:2] = (min(size[0], 5.4), min(size[1], 2.3))
                        yaw = np.pi / 2 if self.rng.random() < 0.5 else -np.pi / 2
                        self.placer.add(category, "vehicle.parked", (x, y + 2.5), yaw, size=size)


def populate_scene(city: City, rng: np.random.Generator, duration_s: float) -> Scenario:
    """Ego route plus actors for one scene of `duration_s` seconds."""
    placer = _Placer(rng)
    ego, ego_lane, junction = _choose_ego(city, rng, duration_s)
    density_name = str(rng.choice(["light", "medium", "dense"]))
    density = {"light": 0.2, "medium": 0.5, "dense": 0.9}[density_name]
    crossing_lanes = city.crossing_lanes(junction, ego_lane.axis)
    lo_hi = lambda lane: (junction.x0, junction.x1) if lane.axis == 0 else (junction.y0, junction.y1)  # noqa: E731
    approach_lanes = [lane for lane in crossing_lanes if lane.ends_at(*lo_hi(lane))]
    work_lane = approach_lanes[int(rng.integers(len(approach_lanes)))]
    road = _RoadTraffic(placer, city, ego, ego_lane, junction, duration_s)
    road.work_zone(work_lane)
    road.ego_road_traffic(density)
    road.crossing_traffic(work_lane)
    road.crossing_pedestrians()
    off_road = _OffRoad(placer, city, ego, duration_s)
    off_road.carpark_vehicles()
    off_road.parked_cycles(ego.pose_at(duration_s * 0.3)[:2], 2 + int(density * 4))
    off_road.pedestrians_and_cycles(density)
    lighting = LIGHTINGS[int(rng.integers(len(LIGHTINGS)))]
    return Scenario(ego, placer.actors, lighting, duration_s, density_name, placer.occupied)

