"""Data sources in the nuScenes schema: the nuScenes devkit reader and the synthetic world."""
