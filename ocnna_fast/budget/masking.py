"""Masking channels without surgery, and the loss a masked network is
scored by: forward hooks zero given channels of given layers' outputs (what
removal does to the layers that read them), channels are removed lowest
value first, and a candidate's loss is the KL divergence of its
predictions from the base model's."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .allocation import GroupInfo

__all__ = ["Masks", "lowest_first", "expand", "mean_kl"]


class Masks:
    """Forward hooks that zero given channels of given layers' outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.handles: List[Any] = []

    def set(self, masks: Dict[str, List[int]]) -> None:
        self.clear()
        for name, channels in masks.items():
            idx = torch.as_tensor(channels, dtype=torch.long)
            self.handles.append(self.modules[name].register_forward_hook(zeroing(idx)))

    def clear(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def zeroing(idx: torch.Tensor) -> Callable:
    def hook(module, inputs, output):
        output = output.clone()
        output[:, idx] = 0
        return output

    return hook


def lowest_first(info: GroupInfo) -> List[int]:
    """Positions (within one block) in the order they are removed: lowest value first, ties by index."""
    v = np.asarray(info.values, dtype=np.float64)
    per = v.reshape(info.blocks, -1).mean(axis=0) if info.blocks > 1 else v
    return np.lexsort((-np.arange(per.size), per)).tolist()


def expand(positions: Sequence[int], info: GroupInfo) -> List[int]:
    per = info.width // info.blocks
    return [p + b * per for b in range(info.blocks) for p in positions]


def mean_kl(
    model: Callable[[Any], torch.Tensor], evaluation: Sequence[Any], reference: Sequence[torch.Tensor]
) -> float:
    """The mean KL divergence of ``model``'s predictions on ``evaluation``
    (batches, or kept activations a cut network reads) from ``reference``."""
    total, n = 0.0, 0
    with torch.no_grad():
        for x, ref in zip(evaluation, reference):
            logp = F.log_softmax(model(x), 1)
            total += float(F.kl_div(logp, ref, reduction="sum", log_target=True))
            n += logp.shape[0]
    return total / n
