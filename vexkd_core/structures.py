"""Typed containers shared by models, evaluation, reports and the ROS nodes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BEVGrid:
    """A bird's-eye-view raster in a sensor frame (x forward, y left).

    Maps are indexed [row, column] = [y index, x index], row 0 at `y_min`: the layout of
    nav_msgs/OccupancyGrid, so a map goes to ROS without transposing.
    """

    x_min: float
    y_min: float
    resolution: float
    width: int  # cells along x
    height: int  # cells along y

    @property
    def x_max(self) -> float:
        return self.x_min + self.width * self.resolution

    @property
    def y_max(self) -> float:
        return self.y_min + self.height * self.resolution

    @classmethod
    def centered(cls, half_extent: float, resolution: float) -> "BEVGrid":
        """A square grid of side 2 * half_extent around the sensor."""
        cells = int(round(2 * half_extent / resolution))
        return cls(-half_extent, -half_extent, resolution, cells, cells)

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y of every cell centre, each shaped (height, width)."""
        xs = self.x_min + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.y_min + (np.arange(self.height) + 0.5) * self.resolution
        return np.meshgrid(xs, ys)


@dataclass
class Boxes3D:
    """N oriented 3-D boxes in one frame.

    `size_lwh` are the extents along the box's own x (heading), y and z axes. nuScenes
    stores (width, length, height): convert with `size_lwh = wlh[:, [1, 0, 2]]`.
    """

    center: np.ndarray  # (N, 3) metres
    size_lwh: np.ndarray  # (N, 3) metres
    yaw: np.ndarray  # (N,) radians about +z
    velocity: np.ndarray  # (N, 2) m/s along x, y
    label: np.ndarray  # (N,) int index into the class list
    score: np.ndarray  # (N,) in 0..1

    def __post_init__(self) -> None:
        n = len(self.center)
        shapes = {"center": (n, 3), "size_lwh": (n, 3), "yaw": (n,), "velocity": (n, 2),
                  "label": (n,), "score": (n,)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"Boxes3D.{name} has shape {np.shape(getattr(self, name))}, "
                                 f"expected {shape}")

    def __len__(self) -> int:
        return len(self.center)

    @classmethod
    def empty(cls) -> "Boxes3D":
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)),
                   np.zeros(0, dtype=np.int64), np.zeros(0))

    def select(self, keep: np.ndarray) -> "Boxes3D":
        """The boxes where `keep` (a boolean mask or index array) says so."""
        return Boxes3D(self.center[keep], self.size_lwh[keep], self.yaw[keep], self.velocity[keep],
                       self.label[keep], self.score[keep])

    def corners(self) -> np.ndarray:
        """(N, 8, 3) corners: the 4 bottom ones counter-clockwise, then the 4 top ones."""
        signs = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                          [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], dtype=np.float64)
        local = signs[None] * self.size_lwh[:, None, :] / 2.0
        cos, sin = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = local[..., 0] * cos - local[..., 1] * sin
        y = local[..., 0] * sin + local[..., 1] * cos
        return np.stack([x, y, local[..., 2]], axis=-1) + self.center[:, None, :]
