"""Pinhole camera renderer with a depth buffer.

The ground is ray-cast per pixel (road at z=0, walkways raised) and coloured from the
city's material raster, so lane lines, crossings, stop lines, kerbs and car-park bays are
visible where the map says. Boxes are drawn face by face: each visible face is filled as
a polygon, its exact depth per pixel comes from the ray/plane intersection, and a pixel
is kept only when nearer than what is already there. Surface patterns (windows, wheels,
clothes, cone stripes) identify each class; colours vary per instance. The scene's camera
response (conditions.py) then sets exposure, glare and blur before the sensor's noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .city import KERB, WALKWAY, City
from .conditions import CameraResponse, Lighting
from .rig import NUSCENES_IMAGE_SIZE
from .streetscape import WALKWAY_HEIGHT_M
from .world import KIND_INDEX, SceneSolids

GROUND_RGB = np.array([(88, 110, 60), (72, 72, 76), (225, 225, 220), (220, 180, 40),
                       (165, 160, 150), (95, 95, 100), (190, 185, 175)], dtype=np.float64)
FOG_DISTANCE_M = 350.0
NEAR_PLANE_M = 0.1
_FACE_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
# Corner indices (into the +-1 sign table below) of each face, counter-clockwise from outside.
_FACE_CORNERS = np.array([[0, 3, 7, 4], [1, 5, 6, 2], [0, 4, 5, 1], [3, 2, 6, 7], [4, 7, 6, 5], [0, 1, 2, 3]])
_CORNER_SIGNS = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                          [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], float)


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    actor: np.ndarray  # (H, W) int32: index into Scenario.actors, -1 elsewhere
    silhouette_px: np.ndarray  # (A,) pixels each actor would cover if nothing occluded it


@lru_cache(maxsize=16)
def _pixel_rays(width: int, height: int, k_bytes: bytes) -> np.ndarray:
    k = np.frombuffer(k_bytes).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def _hash(*coordinates: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    value = np.zeros(np.broadcast(*coordinates).shape)
    for coordinate, factor in zip(coordinates, (12.9898, 78.233, 37.719)):
        value = value + coordinate * factor
    return np.modf(np.abs(np.sin(value) * 43758.5453))[0]


def render(city: City, solids: SceneSolids, actor_count: int, lighting: Lighting,
           camera_to_world: np.ndarray, k: np.ndarray, image_size: tuple[int, int], t: float,
           rng: np.random.Generator, count_silhouettes: bool = False,
           response: CameraResponse = CameraResponse()) -> Frame:
    """One camera image; `count_silhouettes` also measures each actor's unoccluded area
    (needed for the visibility of key-frame annotations, and slower)."""
    width, height = image_size
    rays_cam = _pixel_rays(width, height, np.ascontiguousarray(k, dtype=np.float64).tobytes())
    rotation, origin = camera_to_world[:3, :3], camera_to_world[:3, 3]
    rays = rays_cam @ rotation.T
    sun = np.asarray(lighting.sun_direction) / np.linalg.norm(lighting.sun_direction)

    color = _sky(rays, lighting)
    depth = np.full((height, width), np.inf)
    _ground(city, rays, origin, lighting, sun, color, depth)
    actor = np.full((height, width), -1, dtype=np.int32)
    silhouette = np.zeros(actor_count, dtype=np.int64)
    _boxes(solids, t, rays, origin, rotation, k, lighting, sun, color, depth, actor,
           silhouette if count_silhouettes else None)
    noisy = _respond(color, response, width) + 2.5 * rng.standard_normal(color.shape, dtype=np.float32)
    return Frame(np.clip(noisy, 0, 255).astype(np.uint8), actor, silhouette)


def _respond(color: np.ndarray, response: CameraResponse, width: int) -> np.ndarray:
    """Radiance -> pixel values: exposure gain, blur (given at 1600 px, scaled to this width),
    and veiling glare that lifts black towards `flare`."""
    exposed = color * response.exposure
    sigma = response.blur_sigma_px * width / NUSCENES_IMAGE_SIZE[0]
    if sigma > 0:
        exposed = cv2.GaussianBlur(exposed.astype(np.float32), (0, 0), sigma)
    return response.flare + exposed * (1.0 - response.flare / 255.0)


def _sky(rays: np.ndarray, lighting: Lighting) -> np.ndarray:
    blend = np.clip(rays[..., 2] * 3.0, 0.0, 1.0)[..., None]
    return (1 - blend) * np.asarray(lighting.sky_horizon, float) + blend * np.asarray(lighting.sky_top, float)


def _fog(color: np.ndarray, distance: np.ndarray, lighting: Lighting) -> np.ndarray:
    amount = (1.0 - np.exp(-distance / FOG_DISTANCE_M))[..., None]
    return color * (1 - amount) + np.asarray(lighting.sky_horizon, float) * amount


def _ground(city: City, rays, origin, lighting: Lighting, sun, color, depth) -> None:
    down = rays[..., 2] < -1e-4
    dz = rays[down][:, 2]
    t_road = -origin[2] / dz
    t_raised = (WALKWAY_HEIGHT_M - origin[2]) / dz
    raised_xy = origin[:2] + rays[down][:, :2] * t_raised[:, None]
    raised_material = city.material_at(raised_xy[:, 0], raised_xy[:, 1])
    on_walkway = np.isin(raised_material, (WALKWAY, KERB))
    t = np.where(on_walkway, t_raised, t_road)
    xy = origin[:2] + rays[down][:, :2] * t[:, None]
    material = np.where(on_walkway, raised_material, city.material_at(xy[:, 0], xy[:, 1]))
    grain = _hash(np.floor(xy[:, 0] * 5), np.floor(xy[:, 1] * 5))[:, None]
    shade = lighting.ambient + (1 - lighting.ambient) * max(sun[2], 0.0)
    ground = GROUND_RGB[material] * (0.9 + 0.2 * grain) * shade
    color[down] = _fog(ground, t, lighting)
    depth[down] = t


def _surface(kind: int, face: int, along: np.ndarray, up: np.ndarray, size: np.ndarray,
             colors: np.ndarray) -> np.ndarray:
    """Base colour of the pixels of one face, by class pattern.

    `along` runs 0..1 across the face horizontally: rear to front on the side faces, right
    to left on the front, back and top faces; `up` runs 0..1 from the bottom of the box.
    """
    primary, secondary = colors[0].astype(float), colors[1].astype(float)
    out = np.broadcast_to(primary, (len(up), 3)).copy()
    side = face in (2, 3)
    metres_along = along * (size[0] if side else size[1])
    name = _KIND_NAMES[kind]
    if name == "building" and face < 4:
        window = (np.modf(metres_along / 3.0)[0] > 0.3) & (np.modf(up * size[2] / 3.2)[0] > 0.35)
        out[window] = (45, 60, 78)
    elif name in ("car", "truck", "bus", "construction") and face < 4:
        cab = (along > 0.72) if side else np.full(len(up), face == 0)
        if name == "construction":
            out[np.modf(metres_along / 0.8)[0] < 0.2] = (30, 30, 30)
        if name == "truck":
            out[cab] = secondary
        glass = (up > (0.45 if name == "bus" else 0.55)) & (up < 0.85)
        if name in ("truck", "construction"):
            glass &= cab
        out[glass] = (35, 45, 58)
        lamps = (up > 0.4) & (up < 0.52) & (np.abs(along - 0.5) > 0.32)
        if side:
            out[(up < 0.3) & ((np.abs(along - 0.18) < 0.07) | (np.abs(along - 0.82) < 0.07))] = (18, 18, 18)
        else:
            out[lamps] = (250, 245, 210) if face == 0 else (200, 20, 20)
    elif name == "trailer":
        out[up < 0.25] = (30, 30, 30)
    elif name == "pedestrian":
        out[up < 0.47] = secondary
        out[up > 0.84] = (205, 160, 130)
        out[up > 0.95] = (40, 30, 25)
    elif name in ("motorcycle", "bicycle", "motorcycle_rider", "bicycle_rider"):
        frame_top = 0.6 if name.endswith("rider") else 1.0
        low = up < frame_top
        out[low] = (25, 25, 28)
        out[low & (up > 0.3 * frame_top) & (np.abs(along - 0.5) < 0.3)] = primary
        if name.endswith("rider"):
            out[up > 0.88] = secondary  # helmet
    elif name == "cone":
        out[:] = (250, 105, 10)
        out[(up > 0.45) & (up < 0.62)] = (245, 245, 245)
    elif name == "barrier":
        stripe = np.modf(metres_along / 0.6 + up * 0.8)[0] < 0.5
        out[:] = (210, 25, 25)
        out[stripe] = (240, 240, 240)
    elif name in ("foliage", "hedge"):
        out *= 0.75 + 0.5 * _hash(np.floor(along * 9), np.floor(up * 9), float(face))[:, None]
    if face == 4 and name not in ("foliage", "hedge", "cone", "pedestrian"):
        out *= 0.85
    return out


_KIND_NAMES = {index: name for name, index in KIND_INDEX.items()}


def _clip_near(points: np.ndarray) -> np.ndarray:
    """Clip a polygon (camera frame) to z >= NEAR_PLANE_M (Sutherland-Hodgman, one plane)."""
    out = []
    for i in range(len(points)):
        current, following = points[i], points[(i + 1) % len(points)]
        current_in, following_in = current[2] >= NEAR_PLANE_M, following[2] >= NEAR_PLANE_M
        if current_in:
            out.append(current)
        if current_in != following_in:
            ratio = (NEAR_PLANE_M - current[2]) / (following[2] - current[2])
            out.append(current + ratio * (following - current))
    return np.array(out)


def _boxes(solids: SceneSolids, t, rays, origin, rotation, k, lighting: Lighting, sun,
           color, depth, actor_buffer, silhouette) -> None:
    height, width = depth.shape
    centers = solids.centers_at(t)
    relative = centers - origin
    in_camera = relative @ rotation  # box centres in the camera frame
    radius = 0.5 * np.linalg.norm(solids.size_lwh, axis=1)
    # Frustum test on the bounding sphere, then near to far so that hidden faces are skipped.
    slope_x, slope_y = (width / 2) / k[0, 0], (height / 2) / k[1, 1]
    visible = ((in_camera[:, 2] > -radius) & (np.linalg.norm(relative, axis=1) < 200.0)
               & (np.abs(in_camera[:, 0]) < in_camera[:, 2] * slope_x + radius * (1 + slope_x))
               & (np.abs(in_camera[:, 1]) < in_camera[:, 2] * slope_y + radius * (1 + slope_y)))
    candidates = np.flatnonzero(visible)
    for index in candidates[np.argsort(in_camera[candidates, 2])]:
        c, s = np.cos(solids.yaw[index]), np.sin(solids.yaw[index])
        box_rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        half = solids.size_lwh[index] / 2
        corners_world = centers[index] + (_CORNER_SIGNS * half) @ box_rotation.T
        corners_camera = (corners_world - origin) @ rotation
        for face in range(6):
            normal = box_rotation @ _FACE_NORMALS[face]
            face_point = corners_world[_FACE_CORNERS[face][0]]
            if normal @ (origin - face_point) <= 0:
                continue  # facing away
            polygon = _clip_near(corners_camera[_FACE_CORNERS[face]])
            if len(polygon) < 3:
                continue
            _draw_face(solids, index, face, polygon, normal, face_point, centers[index], box_rotation, half,
                       rays, origin, k, lighting, sun, color, depth, actor_buffer, silhouette, width, height)


def _draw_face(solids, index, face, polygon, normal, face_point, centre, box_rotation, half, rays, origin,
               k, lighting, sun, color, depth, actor_buffer, silhouette, width, height) -> None:
    projected = polygon[:, :2] / polygon[:, 2:3] * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
    projected = np.clip(projected, -4 * width, 5 * width)  # keep integer conversion in range
    x0, y0 = np.floor(projected.min(axis=0)).astype(int)
    x1, y1 = np.ceil(projected.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return
    actor = solids.actor[index]
    hidden = depth[y0:y1, x0:x1].max() < np.linalg.norm(polygon, axis=1).min() - 1e-6
    if hidden and (silhouette is None or actor < 0):
        return  # everything in its bounding box is nearer
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4
    vertices = np.round((projected - [x0 + 0.5, y0 + 0.5]) * (1 << shift)).astype(np.int32)
    cv2.fillConvexPoly(mask, vertices, 1, lineType=cv2.LINE_8, shift=shift)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return
    rows, cols = rows + y0, cols + x0
    pixel_rays = rays[rows, cols]
    t = (normal @ (face_point - origin)) / (pixel_rays @ normal)
    if silhouette is not None and actor >= 0:
        silhouette[actor] += rows.size
    nearer = (t > 0) & (t < depth[rows, cols])
    if not nearer.any():
        return
    rows, cols, t, pixel_rays = rows[nearer], cols[nearer], t[nearer], pixel_rays[nearer]
    local = ((origin + pixel_rays * t[:, None]) - centre) @ box_rotation
    up = np.clip((local[:, 2] + half[2]) / (2 * half[2]), 0, 1)
    axis = 0 if face in (2, 3) else 1  # side faces run along the length, the others across
    along = np.clip((local[:, axis] + half[axis]) / (2 * half[axis]), 0, 1)
    base = _surface(solids.kind[index], face, along, up, 2 * half, solids.colors[index])
    shade = lighting.ambient + (1 - lighting.ambient) * max(float(normal @ sun), 0.0)
    color[rows, cols] = _fog(base * shade, t, lighting)
    depth[rows, cols] = t
    actor_buffer[rows, cols] = actor
