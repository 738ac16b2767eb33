"""The plain shapes a city is made of: axis-aligned rectangles on the ground and the static
boxes (Solid) that stand on it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    def corners(self) -> list[tuple[float, float]]:
        """Counter-clockwise exterior ring, as the map expansion stores polygons."""
        return [(self.x0, self.y0), (self.x1, self.y0), (self.x1, self.y1), (self.x0, self.y1)]

    def shrink(self, margin: float) -> "Rect":
        return Rect(self.x0 + margin, self.y0 + margin, self.x1 - margin, self.y1 - margin)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


@dataclass(frozen=True)
class Solid:
    """A static box that LiDAR hits and cameras see (a building, a tree's crown, a sign...)."""

    kind: str  # one of world.STATIC_KINDS
    center: tuple[float, float, float]
    size_lwh: tuple[float, float, float]
    yaw: float
    color: tuple[int, int, int]
