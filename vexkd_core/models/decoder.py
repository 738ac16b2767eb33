"""SECOND-style BEV backbone + FPN: low-level BEV features in, high-level BEV features out."""
from __future__ import annotations

import torch
from torch import nn

from .camera_encoder import conv_bn_relu


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
        self.out_channels = share * len(channels)

    def forward(self, low_level: torch.Tensor) -> torch.Tensor:
        x, outputs = low_level, []
        for stage, upsample in zip(self.stages, self.upsample):
            x = stage(x)
            outputs.append(upsample(x))
        return torch.cat(outputs, dim=1)
