"""Bias compensation of removed channels, for models whose BatchNorm is
folded into the convs (the TFLite MobileNets, EfficientNet-Lite) and so has
no statistics to re-estimate after surgery.

A removed input channel ``c`` of a dense conv or linear layer used to add
``W[:, c] * x_c`` to every output.  Replacing that term by its mean over
calibration images, ``W[:, c] * mean(x_c)`` (summed over the kernel for a
conv), folded into the layer's bias, keeps each output's mean where it was:
exactly for 1x1 convs and linear layers, up to the zero-padded borders for
larger kernels.  This is the folded-BN counterpart of re-estimating BatchNorm
(which re-centres the same shift when a BatchNorm follows).

Layers without a bias (those a BatchNorm follows) are left to BatchNorm
re-estimation; grouped and depthwise convs lose an output with each input,
so nothing downstream of them changes but through their dense consumers.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Sequence

import torch
from torch import nn

from .._util.module_state import hooked_eval_pass

__all__ = ["input_means", "compensate_biases", "compensate"]


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def input_means(model: nn.Module, batches: Iterable, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
    """float64 mean of each named layer's input per channel (per feature for
    a linear layer) over the batches, from one forward pass in eval mode."""
    modules = dict(model.named_modules())
    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, int] = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().double()
            dims = [0] + list(range(2, x.dim()))
            n = x.numel() // x.shape[1]
            sums[name] = sums.get(name, 0) + x.sum(dims).cpu()
            counts[name] = counts.get(name, 0) + n

        return pre

    hooked_eval_pass(model, batches, [(modules[n], hook(n), True) for n in layers], layers, counts.__contains__)
    return {n: sums[n] / counts[n] for n in layers}


def compensate_biases(
    pruned: nn.Module,
    base: nn.Module,
    channel_maps: Mapping[str, Mapping[str, Sequence[int]]],
    means: Mapping[str, torch.Tensor],
) -> Dict[str, int]:
    """Adds each removed input's mean contribution to the layer's bias, in
    place.  ``channel_maps`` is ``plan["channel_maps"]`` of ``prune``.  Returns
    ``{"compensated": layers, "skipped_no_bias": layers}``."""
    base_mods, pruned_mods = dict(base.named_modules()), dict(pruned.named_modules())
    done = skipped = 0
    for name, entry in channel_maps.items():
        old, new = base_mods.get(name), pruned_mods.get(name)
        if old is None or new is None or not _dense(old):
            continue
        if new.bias is None:
            skipped += 1
            continue
        removed = torch.as_tensor(list(entry["removed_inputs"]), dtype=torch.int64)
        kept_out = torch.as_tensor(list(entry["kept_outputs"]), dtype=torch.int64)
        w = old.weight.detach().double()[:, removed]
        if w.dim() == 4:
            w = w.sum((2, 3))
        shift = w @ means[name].double()[removed]
        with torch.no_grad():
            new.bias += shift[kept_out].to(new.bias.dtype)
        done += 1
    return {"compensated": done, "skipped_no_bias": skipped}


def compensate(pruned: nn.Module, base: nn.Module, plan: Mapping, batches: Iterable) -> Dict[str, int]:
    """Measures the inputs of every layer that lost input channels on
    ``batches`` (through ``base``) and compensates their biases in ``pruned``."""
    maps = plan.get("channel_maps") or {}
    base_mods = dict(base.named_modules())
    layers = [n for n in maps if n in base_mods and _dense(base_mods[n])]
    if not layers:
        return {"compensated": 0, "skipped_no_bias": 0}
    return compensate_biases(pruned, base, maps, input_means(base, batches, layers))
