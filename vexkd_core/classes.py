"""The label sets the models predict, in nuScenes naming."""

# The 10 classes of the nuScenes detection benchmark, in the devkit's order.
DETECTION_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)

# BEV map segmentation classes as BEVFusion reports them.
MAP_CLASSES: tuple[str, ...] = (
    "drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider",
)

# RGB in 0..1, one per detection class; shared by RViz markers and report pictures.
DETECTION_CLASS_COLORS: dict[str, tuple[float, float, float]] = {
    "car": (0.12, 0.47, 0.71),
    "truck": (1.00, 0.50, 0.05),
    "construction_vehicle": (0.55, 0.34, 0.29),
    "bus": (0.84, 0.15, 0.16),
    "trailer": (0.58, 0.40, 0.74),
    "barrier": (0.50, 0.50, 0.50),
    "motorcycle": (0.89, 0.47, 0.76),
    "bicycle": (0.74, 0.74, 0.13),
    "pedestrian": (0.09, 0.75, 0.81),
    "traffic_cone": (1.00, 0.85, 0.00),
}
