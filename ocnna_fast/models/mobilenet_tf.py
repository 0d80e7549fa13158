"""MobileNet v1 as TensorFlow built it, for ImageNet weights converted from
TFLite files (``ocnna_fast.models.tflite_convert``).

Two details make a float PyTorch copy reproduce the TensorFlow graph:
- TensorFlow's SAME padding: for a stride-2 conv the extra row and column go
  at the bottom and right (``Conv2dSame``), not on both sides as PyTorch's
  symmetric ``padding=1`` would;
- BatchNorm is folded into each conv's weights and bias (the TFLite files
  hold no BatchNorm), so every conv carries a bias and there is nothing to
  re-estimate after pruning.
The TFLite classifier has 1001 outputs, index 0 being "background"; the
converter drops that row, so the model's classifier has the 1000 ImageNet
classes in standard order (a slice in forward would hide the classifier's
outputs from Torch-Pruning's dependency graph).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2dSame",
    "MobileNetV1TF",
    "MobileNetV2TF",
    "MOBILENET_V1_STRIDES",
    "mobilenet_v1_widths",
    "TF_MOBILENETS",
    "tf_mobilenet",
]

# the 13 depthwise-separable blocks of MobileNet v1 (Howard et al. 2017, table 1)
MOBILENET_V1_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
_V1_BASE = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)

# zoo name -> (version, width multiplier, input size, input zero point, input scale) of the Coral
# TFLite files; the uint8 input quantisation real = (q - zero point) * scale is the normalisation
TF_MOBILENETS = {
    "mobilenet_v1_025_imagenet": (1, 0.25, 128, 128.0, 1 / 128),
    "mobilenet_v1_050_imagenet": (1, 0.5, 160, 128.0, 1 / 128),
    "mobilenet_v1_075_imagenet": (1, 0.75, 192, 128.0, 1 / 128),
    "mobilenet_v2_100_imagenet": (2, 1.0, 224, 128.0, 1 / 128),  # TF1 (slim) file
    "mobilenet_v2_100_imagenet_tf2": (2, 1.0, 224, 127.0, 1 / 127.5),  # TF2 (Keras) file
}


def mobilenet_v1_widths(multiplier: float, min_depth: int = 8) -> List[int]:
    """Channels of the stem and of each block's pointwise conv, as TF-slim
    rounds them (``max(int(d * multiplier), min_depth)``)."""
    return [max(int(d * multiplier), min_depth) for d in _V1_BASE]


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's SAME padding: the output has
    ``ceil(input / stride)`` rows and columns, and an odd total padding puts
    the extra row / column after (bottom / right)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    @staticmethod
    def _pads(size: int, k: int, s: int, d: int) -> Tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._pads(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class _TFInput:
    """Inputs: RGB in [0, 1] normalised with ``input_mean`` / ``input_std``
    (the TFLite file's uint8 input quantisation); the evaluation crop is the
    central 87.5% resized to the input size."""

    crop_fraction = 0.875

    def _set_input(self, zero_point: float, scale: float) -> None:
        self.input_mean = (zero_point / 255.0,) * 3
        self.input_std = (1.0 / (255.0 * scale),) * 3


class MobileNetV1TF(nn.Module, _TFInput):
    """MobileNet v1 with folded BatchNorm (every conv has a bias) and ReLU6."""

    def __init__(
        self, widths: Sequence[int], num_classes: int = 1000, zero_point: float = 128.0, scale: float = 1 / 128
    ) -> None:
        super().__init__()
        self._set_input(zero_point, scale)
        if len(widths) != 14:
            raise ValueError(f"MobileNet v1 has a stem and 13 blocks: 14 widths, got {len(widths)}")
        self.stem = Conv2dSame(3, widths[0], 3, stride=2)
        blocks: List[nn.Module] = []
        c = widths[0]
        for out, s in zip(widths[1:], MOBILENET_V1_STRIDES):
            blocks.append(
                nn.Sequential(Conv2dSame(c, c, 3, stride=s, groups=c), nn.ReLU6(), nn.Conv2d(c, out, 1), nn.ReLU6())
            )
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Conv2d(c, num_classes, 1)

    def tf_relu6_flags(self) -> List[bool]:
        """Whether a fused ReLU6 follows each conv, in execution order."""
        return [True] * 27 + [False]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.stem(x)))
        return self.logits(F.adaptive_avg_pool2d(x, 1)).flatten(1)


# MobileNet v2 inverted residual stages (Sandler et al. 2018, table 2): expansion t, channels c, repeats n, stride s
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.expand = nn.Conv2d(cin, hidden, 1) if t != 1 else None
        self.depthwise = Conv2dSame(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.depthwise(h)))  # linear bottleneck: no activation
        return x + h if self.residual else h


class MobileNetV2TF(nn.Module, _TFInput):
    """MobileNet v2 (width 1.0) with folded BatchNorm and ReLU6, as TensorFlow built it."""

    def __init__(self, num_classes: int = 1000, zero_point: float = 128.0, scale: float = 1 / 128) -> None:
        super().__init__()
        self._set_input(zero_point, scale)
        self.stem = Conv2dSame(3, 32, 3, stride=2)
        blocks, cin = [], 32
        for t, c, n, s in _V2_STAGES:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, 1280, 1)
        self.logits = nn.Conv2d(1280, num_classes, 1)

    def tf_relu6_flags(self) -> List[bool]:
        flags = [True]
        for b in self.blocks:
            flags += ([True] if b.expand is not None else []) + [True, False]
        return flags + [True, False]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.head(self.blocks(F.relu6(self.stem(x)))))
        return self.logits(F.adaptive_avg_pool2d(x, 1)).flatten(1)


def tf_mobilenet(name: str, num_classes: int = 1000) -> nn.Module:
    """The zoo MobileNet ``name`` (a key of ``TF_MOBILENETS``), untrained."""
    version, mult, _, zero_point, scale = TF_MOBILENETS[name]
    if version == 1:
        return MobileNetV1TF(mobilenet_v1_widths(mult), num_classes, zero_point, scale)
    return MobileNetV2TF(num_classes, zero_point, scale)
