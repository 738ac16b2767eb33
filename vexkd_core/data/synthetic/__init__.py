"""The synthetic world: a seeded simulator that writes datasets in the exact nuScenes schema.

Layout (city.py, streetscape.py, shapes.py), population (actors.py, sizes.py), sensors
(rig.py, lidar.py, materials.py, camera.py, conditions.py), map expansion (mapjson.py) and
the writers (scene_writer.py, writer.py). Real nuScenes and these datasets are read by the
same code, through nuscenes-devkit.
"""
from .writer import SynthConfig, demo_config, write_dataset

__all__ = ["SynthConfig", "demo_config", "write_dataset"]
