"""Write a city's map geometry in the nuScenes map-expansion v1.3 JSON schema."""
from __future__ import annotations

import hashlib

from .city import City
from .shapes import Rect

MAP_EXPANSION_VERSION = "1.3"


class _MapRecords:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self.counter = 0
        self.layers: dict[str, list] = {name: [] for name in (
            "polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane",
            "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider",
            "lane_divider", "traffic_light", "lane_connector")}

    def token(self) -> str:
        self.counter += 1
        return hashlib.md5(f"{self.namespace}/{self.counter}".encode()).hexdigest()

    def node(self, x: float, y: float) -> str:
        token = self.token()
        self.layers["node"].append({"token": token, "x": float(x), "y": float(y)})
        return token

    def polygon(self, rect: Rect, hole: Rect | None = None) -> str:
        token = self.token()
        holes = [] if hole is None else [{"node_tokens": [self.node(x, y) for x, y in hole.corners()[::-1]]}]
        self.layers["polygon"].append({"token": token, "exterior_node_tokens":
                                       [self.node(x, y) for x, y in rect.corners()], "holes": holes})
        return token

    def line(self, start, end) -> tuple[str, list[str]]:
        token = self.token()
        nodes = [self.node(*start), self.node(*end)]
        self.layers["line"].append({"token": token, "node_tokens": nodes})
        return token, nodes

    def add(self, layer: str, **fields) -> str:
        token = self.token()
        self.layers[layer].append({"token": token, **fields})
        return token


def _edge(rect: Rect, axis: int, at_start: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """The short edge of a lane rect at its start or end along `axis`."""
    if axis == 0:
        x = rect.x0 if at_start else rect.x1
        return (x, rect.y0), (x, rect.y1)
    y = rect.y0 if at_start else rect.y1
    return (rect.x0, y), (rect.x1, y)


def city_map_json(city: City) -> dict:
    """The map-expansion document for `city` (loadable by nuscenes-devkit's NuScenesMap)."""
    records = _MapRecords(city.location)
    geometry = city.geometry
    drivable = records.add("drivable_area", polygon_tokens=[records.polygon(r) for r in geometry.drivable])

    segments = [records.add("road_segment", polygon_token=records.polygon(rect), is_intersection=junction,
                            drivable_area_token=drivable)
                for rect, junction in geometry.road_segments]
    blocks = {}
    for rect, segment in geometry.lanes:
        axis = 0 if rect.x1 - rect.x0 > rect.y1 - rect.y0 else 1
        from_edge, _ = records.line(*_edge(rect, axis, True))
        to_edge, _ = records.line(*_edge(rect, axis, False))
        records.add("lane", polygon_token=records.polygon(rect), lane_type="CAR",
                    from_edge_line_token=from_edge, to_edge_line_token=to_edge,
                    left_lane_divider_segments=[], right_lane_divider_segments=[])
        if segment not in blocks:
            blocks[segment] = records.add("road_block", polygon_token=records.polygon(geometry.road_segments[segment][0]),
                                          from_edge_line_token=from_edge, to_edge_line_token=to_edge,
                                          road_segment_token=segments[segment])
    crossings = [records.add("ped_crossing", polygon_token=records.polygon(rect),
                             road_segment_token=segments[segment])
                 for rect, segment in geometry.ped_crossings]
    any_block = next(iter(blocks.values()))
    for rect, crossing in geometry.stop_lines:
        segment = geometry.ped_crossings[crossing][1]
        records.add("stop_line", polygon_token=records.polygon(rect), stop_line_type="PED_CROSSING",
                    ped_crossing_tokens=[crossings[crossing]], traffic_light_tokens=[],
                    road_block_token=blocks.get(segment, any_block))
    for outer, hole in geometry.walkways:
        records.add("walkway", polygon_token=records.polygon(outer, hole))
    for rect, orientation in geometry.carparks:
        records.add("carpark_area", polygon_token=records.polygon(rect), orientation=orientation,
                    road_block_token=any_block)
    for start, end, segment in geometry.road_dividers:
        line, _ = records.line(start, end)
        records.add("road_divider", line_token=line, road_segment_token=segments[segment])
    for start, end in geometry.lane_dividers:
        line, nodes = records.line(start, end)
        records.add("lane_divider", line_token=line, lane_divider_segments=[
            {"node_token": node, "segment_type": "SINGLE_DASHED_WHITE"} for node in nodes])

    document = {"version": MAP_EXPANSION_VERSION, "canvas_edge": [float(city.size[0]), float(city.size[1])]}
    document.update(records.layers)
    document.update({"arcline_path_3": {}, "connectivity": {}})
    return document
