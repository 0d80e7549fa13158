"""CIFAR ResNet-20/32/44/56 (He et al. 2016, section 4.2) with option-A shortcuts.

Written to load the akamaster/pytorch_resnet_cifar10 checkpoints byte for byte
(see data/resnet-cifar10-akamaster/PROVENANCE.md): identity shortcuts,
and where the shape changes a stride-2 subsample zero-padded on the channel
axis, so shortcuts carry no parameters.
"""

from __future__ import annotations

import os
from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._util.validate import floating_like, torch_load_safely

__all__ = [
    "CifarResNet",
    "cifar_resnet",
    "load_akamaster_checkpoint",
    "ChannelMapShortcut",
    "shortcut_pruner",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "SCOPES",
]

SCOPES = ("full", "inner")

# The akamaster weights were trained on inputs normalised with ImageNet statistics.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class ChannelMapShortcut(nn.Module):
    """Option A, as an explicit channel map: subsample by ``stride`` and place
    input channel ``src[j]`` at output channel ``j`` (``-1``: a zero channel).

    Unpruned, ``src`` is ``[-1]*pad + range(in) + [-1]*pad``: the paper's
    zero-padding, bit for bit.  Written as a map so that structured pruning can
    remove channels on either side and keep every surviving channel where its
    residual addition expects it (see ``shortcut_pruner``).  ``src`` is not
    saved in state dicts: a pruned model is rebuilt by replaying its plan,
    which recomputes it, and the akamaster checkpoints load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        src = torch.full((out_channels,), -1, dtype=torch.long)
        src[pad : pad + in_channels] = torch.arange(in_channels)
        self.register_buffer("src", src, persistent=False)
        self.in_channels = in_channels
        self.stride = stride

    @property
    def out_channels(self) -> int:
        return int(self.src.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # one extra zero channel, index `in_channels`, stands for every -1
        z = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])], 1)
        idx = torch.where(self.src >= 0, self.src, torch.full_like(self.src, x.shape[1]))
        return z.index_select(1, idx)


def shortcut_pruner():
    """A Torch-Pruning pruning function for :class:`ChannelMapShortcut`:
    removing output channels drops their map entries; removing input
    channels renumbers the map, and outputs fed by a removed input become
    zero channels (their source is gone from the whole stage)."""
    import torch_pruning as tp

    class _ShortcutPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: ChannelMapShortcut, idxs):
            gone = {int(i) for i in idxs}
            keep = [j for j in range(layer.out_channels) if j not in gone]
            layer.src = layer.src[keep]
            return layer

        def prune_in_channels(self, layer: ChannelMapShortcut, idxs):
            gone = {int(i) for i in idxs}
            kept = [i for i in range(layer.in_channels) if i not in gone]
            renumber = torch.full((layer.in_channels,), -1, dtype=torch.long)
            renumber[kept] = torch.arange(len(kept))
            layer.src = torch.where(layer.src >= 0, renumber[layer.src.clamp(min=0)], layer.src)
            layer.in_channels = len(kept)
            return layer

        def get_out_channels(self, layer: ChannelMapShortcut) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: ChannelMapShortcut) -> int:
            return layer.in_channels

    return _ShortcutPruner()


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ChannelMapShortcut(in_planes, planes, stride)

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

    def ocnna_ignored_layers(self, scope: str = "full"):
        """Convs whose output channels ``prune`` leaves alone by default.

        ``"full"`` (default): none; stage widths are pruned too (the stem and
        every block's conv2 are coupled through the residual additions and
        the option-A shortcuts, see ``ChannelMapShortcut``).
        ``"inner"``: the stem and every block's conv2, so only each block's
        inner conv1 is pruned: the setting of HRank and CHIP on ResNet-56.
        """
        if scope not in ("full", "inner"):
            raise ValueError(f"scope must be 'full' or 'inner', got {scope!r}")
        if scope == "full":
            return
        yield self.conv1
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                yield block.conv2

    def ocnna_pruners(self):
        """Torch-Pruning pruning functions for this model's own modules."""
        return {ChannelMapShortcut: shortcut_pruner()}

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
            "data/resnet-cifar10-akamaster/ of the repository (or `ocnna-fast fetch resnet56`)"
        )
    ckpt = torch_load_safely(path, "weights")
    state: Dict[str, torch.Tensor] = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (found {type(state).__name__})")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    floating_like(state, model.state_dict(), f"weights {path}")
    model.load_state_dict(state, strict=True)
    return model
