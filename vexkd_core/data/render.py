"""Pictures of one sample of any nuScenes-schema dataset, drawn through nuscenes-devkit."""
from __future__ import annotations

import cv2
import numpy as np
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility
from pyquaternion import Quaternion

from vexkd_core.classes import DETECTION_CLASS_COLORS
from vexkd_core.data.nuscenes_source import map_expansion_file

# Camera mosaic layout, as a driver looks around: front row, then back row.
MOSAIC = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
MAP_LAYER_COLORS = {  # BGR, drawn in this order
    "drivable_area": (110, 110, 110), "carpark_area": (60, 120, 160), "walkway": (150, 180, 150),
    "ped_crossing": (200, 200, 240), "stop_line": (60, 60, 220), "road_divider": (0, 200, 255),
    "lane_divider": (255, 255, 255),
}


def detection_name(category: str) -> str | None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(category)


def _bgr(name: str | None) -> tuple[int, int, int]:
    r, g, b = DETECTION_CLASS_COLORS.get(name, (0.8, 0.8, 0.8))
    return int(b * 255), int(g * 255), int(r * 255)


def render_sample(nusc: NuScenes, sample_token: str, bev_range_m: float = 50.0,
                  bev_pixels: int = 600, camera_width: int = 480) -> np.ndarray:
    """BGR picture: BEV (map layers, LiDAR, GT boxes; forward up) beside the 6 cameras."""
    sample = nusc.get("sample", sample_token)
    bev = _bev(nusc, sample, bev_range_m, bev_pixels)
    rows = [np.hstack([_camera(nusc, sample["data"][channel], camera_width) for channel in row]) for row in MOSAIC]
    cameras = np.vstack(rows)
    scale = bev.shape[0] / cameras.shape[0]
    cameras = cv2.resize(cameras, (int(cameras.shape[1] * scale), bev.shape[0]), interpolation=cv2.INTER_AREA)
    return np.hstack([bev, cameras])


def _bev(nusc: NuScenes, sample: dict, bev_range_m: float, pixels: int) -> np.ndarray:
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    calibration = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
    yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
    resolution = 2 * bev_range_m / pixels
    image = np.full((pixels, pixels, 3), 25, np.uint8)
    has_map = map_expansion_file(nusc.dataroot, location).is_file()  # a separate nuScenes download
    if has_map:
        nusc_map = NuScenesMap(nusc.dataroot, location)
        masks = nusc_map.get_map_mask((pose["translation"][0], pose["translation"][1], 2 * bev_range_m,
                                       2 * bev_range_m), np.degrees(yaw), list(MAP_LAYER_COLORS), (pixels, pixels))
        for mask, color in zip(masks, MAP_LAYER_COLORS.values()):
            image[mask > 0] = color  # mask rows run along ego y, columns along ego x

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] + bev_range_m) / resolution, (xy[:, 1] + bev_range_m) / resolution], axis=-1)

    cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(lidar["token"]))
    cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
    cloud.translate(np.array(calibration["translation"]))
    pixel = to_pixels(cloud.points[:2].T).astype(int)
    inside = np.all((pixel >= 0) & (pixel < pixels), axis=1)
    brightness = np.clip(60 + cloud.points[3, inside] * 3, 60, 255).astype(np.uint8)
    image[pixel[inside, 1], pixel[inside, 0]] = np.stack([brightness, brightness, 0 * brightness + 255], -1)
    _, boxes, _ = nusc.get_sample_data(lidar["token"])
    for box in boxes:
        box.rotate(Quaternion(calibration["rotation"]))
        box.translate(np.array(calibration["translation"]))
        corners = to_pixels(box.bottom_corners()[:2].T)
        color = _bgr(detection_name(box.name))
        cv2.polylines(image, [np.round(corners * 4).astype(np.int32)], True, color, 1, cv2.LINE_AA, shift=2)
        front = to_pixels(((box.bottom_corners()[:2, 0] + box.bottom_corners()[:2, 3]) / 2)[None])[0]
        centre = to_pixels(box.center[None, :2])[0]
        cv2.line(image, tuple(np.round(centre).astype(int)), tuple(np.round(front).astype(int)), color, 1)
    # Forward up, left to the left: rotate the [y, x] raster a quarter turn and mirror it.
    image = np.ascontiguousarray(np.rot90(image)[:, ::-1])
    cv2.drawMarker(image, (pixels // 2, pixels // 2), (255, 255, 255), cv2.MARKER_TRIANGLE_UP, 12, 2)
    caption = f"BEV {2 * bev_range_m:.0f} m, {location}" + ("" if has_map else " (no map expansion)")
    cv2.putText(image, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _camera(nusc: NuScenes, sample_data_token: str, width: int) -> np.ndarray:
    path, boxes, intrinsic = nusc.get_sample_data(sample_data_token, box_vis_level=BoxVisibility.ANY)
    image = cv2.imread(path)
    for box in boxes:
        color = _bgr(detection_name(box.name))
        box.render_cv2(image, view=intrinsic, normalize=True, colors=(color, color, color), linewidth=1)
    channel = nusc.get("sample_data", sample_data_token)["channel"]
    scale = width / image.shape[1]
    image = cv2.resize(image, (width, int(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    cv2.putText(image, channel, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image
