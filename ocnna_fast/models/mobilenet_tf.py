"""MobileNet v1 as TensorFlow built it, for ImageNet weights converted from
TFLite files (``ocnna_fast.tflite_convert``).

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

__all__ = ["Conv2dSame", "MobileNetV1TF", "MOBILENET_V1_STRIDES", "mobilenet_v1_widths", "TF_MOBILENETS"]

# the 13 depthwise-separable blocks of MobileNet v1 (Howard et al. 2017, table 1)
MOBILENET_V1_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
_V1_BASE = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)

# zoo name -> (width multiplier, input size) of the Coral TFLite files
TF_MOBILENETS = {
    "mobilenet_v1_025_imagenet": (0.25, 128),
    "mobilenet_v1_050_imagenet": (0.5, 160),
    "mobilenet_v1_075_imagenet": (0.75, 192),
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


class MobileNetV1TF(nn.Module):
    """MobileNet v1 with folded BatchNorm (every conv has a bias) and ReLU6.

    Inputs: RGB in [0, 1] normalised with ``input_mean`` / ``input_std``
    (the TFLite files' uint8 input quantisation, ``(q - 128) / 128``); the
    evaluation crop is the central 87.5% resized to ``input_size``."""

    input_mean = (128 / 255,) * 3
    input_std = (128 / 255,) * 3
    crop_fraction = 0.875

    def __init__(self, widths: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        if len(widths) != 14:
            raise ValueError(f"MobileNet v1 has a stem and 13 blocks: 14 widths, got {len(widths)}")
        self.stem = Conv2dSame(3, widths[0], 3, stride=2)
        blocks: List[nn.Module] = []
        c = widths[0]
        for out, s in zip(widths[1:], MOBILENET_V1_STRIDES):
            blocks.append(nn.Sequential(Conv2dSame(c, c, 3, stride=s, groups=c), nn.ReLU6(),
                                        nn.Conv2d(c, out, 1), nn.ReLU6()))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.stem(x)))
        return self.logits(F.adaptive_avg_pool2d(x, 1)).flatten(1)
