"""CIFAR VGG-16 (with BatchNorm), DenseNet-40 (growth 12) and MobileNetV1,
the other CIFAR architectures the OCNNA paper evaluates.  Untrained: no
pretrained weights for them ship with this project."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["vgg16_bn_cifar", "densenet40_cifar", "mobilenet_v1_cifar"]

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers, c = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class _Transition(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetCifar(nn.Module):
    """DenseNet-40 (Huang et al. 2017): 3 dense blocks of 12 layers, growth 12,
    no bottleneck, no compression."""

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 3
        c = 16  # first conv width as in the original DenseNet-40
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        blocks = []
        for b in range(3):
            layers = []
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            blocks.append(nn.Sequential(*layers))
            if b < 2:
                blocks.append(_Transition(c))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class MobileNetV1Cifar(nn.Module):
    """MobileNetV1 (Howard et al. 2017) for 32x32 inputs: stride-1 stem."""

    _CFG = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)]
        c = 32
        for item in self._CFG:
            out, stride = (item, 1) if isinstance(item, int) else item
            layers += [
                nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, out, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def vgg16_bn_cifar(num_classes: int = 10) -> nn.Module:
    return VGGCifar(num_classes)


def densenet40_cifar(num_classes: int = 10) -> nn.Module:
    return DenseNetCifar(40, 12, num_classes)


def mobilenet_v1_cifar(num_classes: int = 10) -> nn.Module:
    return MobileNetV1Cifar(num_classes)
