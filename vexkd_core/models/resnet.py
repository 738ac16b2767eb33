"""ResNet-18/34/50 with exactly torchvision's module layout and parameter names, without
torchvision, so a torchvision ImageNet state dict a user downloaded loads strictly.

Only the trunk is built (conv1 .. layer4): the camera encoder taps the stage outputs and
has no use for the classifier, so a file's fc.* tensors are skipped on loading.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vexkd_core.errors import CheckpointError

STAGE_PLANES = (64, 128, 256, 512)
CLASSIFIER_PREFIX = "fc."


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


class Bottleneck(nn.Module):
    """torchvision's (ResNet v1.5): the stride sits on the 3x3 conv, not the first 1x1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)), inplace=True)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


class ResNet(nn.Module):
    """The trunk: stem (stride 4), then layer1..layer4 at strides 4, 8, 16, 32."""

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks_per_stage: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, blocks_per_stage)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            layers = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes, 1, None) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.out_channels = tuple(planes * block.expansion for planes in STAGE_PLANES)
        # torchvision's initialisation, so training from scratch starts where it would there
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, 2, 1)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def resnet(name: str) -> ResNet:
    """resnet18, resnet34 or resnet50, block counts as in torchvision."""
    if name == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2))
    if name == "resnet34":
        return ResNet(BasicBlock, (3, 4, 6, 3))
    if name == "resnet50":
        return ResNet(Bottleneck, (3, 4, 6, 3))
    raise ValueError(f"unknown ResNet '{name}' (resnet18, resnet34 or resnet50)")


def load_pretrained(backbone: nn.Module, path: Path, name: str) -> None:
    """Load a local state dict into `backbone` with strict key and shape checks (a
    classifier's fc.* excepted); anything wrong is one CheckpointError line naming the file.
    Read with weights_only=True, so the file cannot run code; nothing is downloaded."""
    what = f"pretrained backbone {path}"
    if not path.is_file():
        raise CheckpointError(f"{what} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{what} is not a readable torch file: truncated, corrupt, or holding more than "
                              f"tensors ({type(error).__name__})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} holds a {type(state).__name__}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what} is not a state dict: '{key}' holds a {type(value).__name__}, not a tensor")
    expected = backbone.state_dict()
    # Files saved before PyTorch 0.4.1 (torchvision's older ImageNet ones) lack the BN step
    # counters; the counter does not affect the network, so the model's own is kept.
    weights = {key: value for key, value in expected.items() if key.endswith("num_batches_tracked")}
    weights.update((key, value) for key, value in state.items() if not key.startswith(CLASSIFIER_PREFIX))
    problems = [f"{label} {_first_names(keys)}" for label, keys in (
        ("missing keys", [key for key in expected if key not in weights]),
        ("unexpected keys", [key for key in weights if key not in expected])) if keys]
    if problems:
        raise CheckpointError(f"{what} does not fit {name}: {'; '.join(problems)}")
    for key, value in expected.items():
        if weights[key].shape != value.shape:
            raise CheckpointError(f"{what} does not fit {name}: shape mismatch at {key}: file "
                                  f"{tuple(weights[key].shape)}, model {tuple(value.shape)}")
    backbone.load_state_dict(weights, strict=True)


def _first_names(keys: list[str], shown: int = 3) -> str:
    rest = f" ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + rest
