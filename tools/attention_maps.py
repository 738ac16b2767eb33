"""Figure: what distillation matches at each level. The attention-transfer map (channel mean
of squared features) of teacher, LiDAR student and camera student at the decoder input
(where the low level was tapped before), the low level (the decoder's first stage, tapped
now) and the high level, on one val sample, at the `tiny` preset (trained checkpoints) and
the `nuscenes` preset (random weights: what the architecture alone gives), each panel
titled with its spatial coefficient of variation (std / mean; 0 = nothing to match).

    python tools/attention_maps.py --dataroot demo/world --teacher demo/runs/teacher/model.pt \
        --lidar demo/runs/lidar/model.pt --camera demo/runs/camera/model.pt --out docs/attention_maps.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.config import load_config
from vexkd_core.data.dataset import model_source
from vexkd_core.data.preprocess import collate, preprocess
from vexkd_core.io import atomic_write_bytes, atomic_write_json
from vexkd_core.models.vexkd import build_model
from vexkd_train.pictures import _grid, _panel

LEVELS = ("input", "low", "high")  # input: the decoder's input


@torch.no_grad()
def level_maps(model, batch) -> dict[str, np.ndarray]:
    """AT maps of the decoder's input (caught on its way into the first stage), low and high."""
    caught = {}
    hook = model.decoder.stages[0].register_forward_pre_hook(
        lambda module, inputs: caught.setdefault("input", inputs[0]))
    try:
        output = model.eval()(batch)
    finally:
        hook.remove()
    features = {"input": caught["input"], "low": output.low, "high": output.high}
    return {level: feature.pow(2).mean(dim=1)[0].cpu().numpy() for level, feature in features.items()}


def variation(values: np.ndarray) -> float:
    return float(values.std() / max(values.mean(), 1e-12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--lidar", type=Path, required=True)
    parser.add_argument("--camera", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG; the figures go to the same name .json")
    args = parser.parse_args()

    trained = {name: model_from_checkpoint(path)[0] for name, path in
               (("teacher", args.teacher), ("LiDAR", args.lidar), ("camera", args.camera))}
    torch.manual_seed(0)
    nuscenes = load_config("nuscenes")
    presets = {"tiny (trained)": (next(iter(trained.values())).config, trained),
               "nuscenes (random weights)": (nuscenes, {name: build_model(nuscenes, modality) for name, modality in
                                                        (("teacher", "fusion"), ("LiDAR", "lidar"),
                                                         ("camera", "camera"))})}
    rows, figures = [], {}
    for preset, (config, models) in presets.items():
        source = model_source(args.dataroot, args.version, "val", config, False)
        batch = collate([preprocess(source.sample(0), config)[0]])
        maps = {name: level_maps(model, batch) for name, model in models.items()}
        figures[preset] = {name: {level: variation(values) for level, values in by_level.items()}
                           for name, by_level in maps.items()}
        for level in LEVELS:
            rows.append([_panel(maps[name][level], f"{preset.split()[0][:4]} {name} {level} CV "
                                f"{figures[preset][name][level]:.2f}") for name in models])
    ok, png = cv2.imencode(".png", _grid(rows))
    atomic_write_bytes(args.out, png.tobytes())
    atomic_write_json(args.out.with_suffix(".json"), figures)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
