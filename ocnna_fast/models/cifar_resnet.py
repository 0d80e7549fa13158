"""CIFAR ResNet-20/32/44/56 (He et al. 2016, section 4.2) with option-A shortcuts.

Written to load the akamaster/pytorch_resnet_cifar10 checkpoints byte for byte
(see shared/data/resnet-cifar10-akamaster/PROVENANCE.md): identity shortcuts,
and where the shape changes a stride-2 subsample zero-padded on the channel
axis, so shortcuts carry no parameters.
"""
from __future__ import annotations

import os
from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "cifar_resnet", "load_akamaster_checkpoint", "CIFAR_MEAN", "CIFAR_STD"]

# The akamaster weights were trained on inputs normalised with ImageNet statistics.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class _PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad channels (planes // 4 on each side)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks_per_stage):
                stage.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def ocnna_ignored_layers(self):
        """Convs whose outputs feed the parameter-free option-A shortcuts (the
        stem and every block's conv2).  Their channels are tied across a whole
        stage through zero-padding, which Torch-Pruning cannot follow, so only
        each block's inner conv1 is pruned."""
        yield self.conv1
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                yield block.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """An untrained CIFAR ResNet of the given depth (20, 32, 44, 56 or 110)."""
    if depth not in _DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
    return CifarResNet(_DEPTHS[depth], num_classes)


def load_akamaster_checkpoint(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Loads an akamaster ``resnetNN-xxxxxxxx.th`` file into ``model`` (strictly)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {path} not found; the pretrained CIFAR ResNets are in "
            "shared/data/resnet-cifar10-akamaster/ (set OCNNA_DATA_DIR to that data root)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state: Dict[str, torch.Tensor] = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (found {type(state).__name__})")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model
