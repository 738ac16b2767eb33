"""SECOND-style BEV backbone + FPN: encoder (or fused) BEV features in, high-level BEV out.

The first stage keeps the grid's resolution; its output is the *low-level* feature that
distillation compares. It is tapped there and not at the decoder's input because the
input carries no spatial structure to match at the `nuscenes` preset: the MGFM's output
is a LayerNorm (every cell's channel energy is about the same) and the LiDAR encoder's is
94 % exact zeros (empty pillars). Three conv-BN-ReLU layers later both are dense and
structured, and teacher and student have the same channels there.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import conv_bn_relu

TAPS = ("low", "high")  # the decoder's feature taps, by level


class BEVDecoder(nn.Module):
    def __init__(self, in_channels: int, channels: tuple[int, ...], out_channels: int):
        super().__init__()
        stages, cin = [], in_channels
        for index, cout in enumerate(channels):
            stages.append(nn.Sequential(conv_bn_relu(cin, cout, 1 if index == 0 else 2),
                                        conv_bn_relu(cout, cout), conv_bn_relu(cout, cout)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        share = out_channels // len(channels)
        self.upsample = nn.ModuleList(
            conv_bn_relu(c, share, kernel=1) if index == 0 else nn.Sequential(
                nn.ConvTranspose2d(c, share, 2 ** index, 2 ** index, bias=False), nn.BatchNorm2d(share),
                nn.ReLU(inplace=True))
            for index, c in enumerate(channels))
        self.low_channels = channels[0]
        self.out_channels = share * len(channels)

    def first_stage(self, encoded: torch.Tensor) -> torch.Tensor:
        """Encoder (or fused) BEV map -> the low-level feature."""
        return self.stages[0](encoded)

    def from_first_stage(self, low_level: torch.Tensor) -> torch.Tensor:
        """Low-level feature -> high-level feature (the rest of the backbone and the FPN)."""
        x, outputs = low_level, [self.upsample[0](low_level)]
        for stage, upsample in zip(self.stages[1:], self.upsample[1:]):
            x = stage(x)
            outputs.append(upsample(x))
        return torch.cat(outputs, dim=1)

    def from_tap(self, level: str, feature: torch.Tensor) -> torch.Tensor:
        """A feature at tap `level` ("low": the first stage's output, "high": the decoder's) ->
        the high-level feature the heads read."""
        if level not in TAPS:
            raise ValueError(f"the decoder's feature taps are {', '.join(TAPS)}, not '{level}'")
        return self.from_first_stage(feature) if level == "low" else feature

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.from_first_stage(self.first_stage(encoded))
