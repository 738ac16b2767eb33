"""A patch of open ground in a synthetic city with one box on it, seen from a parked ego:
shared by the sensor and realism tests of the synthetic world."""
import numpy as np

from vexkd_core.data.synthetic.world import KIND_INDEX, SceneSolids


def single_box_world(center, size=(4.0, 2.0, 1.6), velocity=(0.0, 0.0), kind="car", yaw=0.0) -> SceneSolids:
    return SceneSolids(np.array([center], float), np.array([size], float), np.array([yaw]), np.array([velocity], float),
                       np.array([KIND_INDEX[kind]]), np.array([0]), np.array([[[200, 30, 30], [20, 20, 20]]], np.uint8),
                       np.array([0.3]), np.array([200.0]))


class StandingEgo:
    """An ego parked at the origin of an open patch of the city, facing +x."""

    def __init__(self, x: float, y: float):
        self.start, self.yaw, self.speed = (x, y), 0.0, 0.0

    def pose_at(self, t):
        return (*self.start, 0.0)


# A spot in every city's open margin: grass and nothing else for 40 m around.
OPEN_GROUND = (12.0, 12.0)
