"""BatchNorm re-estimation for networks whose BatchNorm is folded into their
convs (the TFLite MobileNets, EfficientNet-Lite).

On an unfolded network, re-estimating BatchNorm after pruning gives every
BatchNorm's output, channel by channel, the mean and spread its affine
parameters say (``beta`` and ``gamma``), which are what the unpruned network
produced there.  A folded network has no BatchNorm left, so we put one back:
each conv is followed by a BatchNorm whose affine parameters are the mean
and standard deviation of that conv's output in the *unpruned* network on
the calibration images (restricted to the channels the conv kept); the
statistics are then re-estimated exactly as for any BatchNorm network
(``batchnorm.recalibrate_batchnorm``: streamed, in execution order through
train-mode batch statistics) and folded back into the conv.  On a folded
copy of a BatchNorm network this is the same computation as re-estimating
its BatchNorm (``tests/recovery/test_foldedbn.py``), and it corrects the variance of
each kept channel as well as the mean that bias compensation alone fixes.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from .._util.module_state import hooked_eval_pass
from .batchnorm import recalibrate_batchnorm

__all__ = ["ConvNorm", "output_moments", "unfold", "fold", "correct_folded"]

EPS = 1e-5


class ConvNorm(nn.Module):
    """A conv followed by the BatchNorm that ``unfold`` puts back."""

    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        w = conv.weight
        self.norm = nn.BatchNorm2d(conv.out_channels, eps=EPS, momentum=None).to(w.device, w.dtype)
        with torch.no_grad():
            self.norm.weight.copy_(std.to(w.dtype))
            self.norm.bias.copy_(mean.to(w.dtype))
        self.norm.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def folded(self) -> nn.Conv2d:
        """The conv with the BatchNorm folded in (a bias added if it had none)."""
        conv, bn = self.conv, self.norm
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros_like(scale))
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        return conv


def output_moments(
    model: nn.Module, batches: Iterable[Any], layers: Sequence[str]
) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Per named layer, the float64 mean and standard deviation of each
    output channel over the batches (one forward pass in eval mode)."""
    modules = dict(model.named_modules())
    sums: Dict[str, List[Any]] = {}

    def hook(name):
        def post(_module, _args, out):
            y = out.detach().double()
            dims = [0] + list(range(2, y.dim()))
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + y.sum(dims).cpu()
            s[1] = s[1] + (y * y).sum(dims).cpu()
            s[2] += y.numel() // y.shape[1]

        return post

    hooked_eval_pass(model, batches, [(modules[n], hook(n), False) for n in layers], layers, sums.__contains__)
    out = {}
    for n, (s1, s2, count) in sums.items():
        mean = s1 / count
        out[n] = (mean, torch.sqrt(torch.clamp(s2 / count - mean * mean, min=0.0)))
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def unfold(model: nn.Module, moments: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> List[str]:
    """Replaces each conv ``moments`` names by a ``ConvNorm`` (in place, at
    the same name, so hooks by name land after the norm); returns the names."""
    modules = dict(model.named_modules())
    for name, (mean, std) in moments.items():
        conv = modules[name]
        if not isinstance(conv, nn.Conv2d) or mean.shape != (conv.out_channels,):
            raise ValueError(f"{name}: expected a conv with {mean.shape[0]} outputs")
        _set(model, name, ConvNorm(conv, mean, std))
    return list(moments)


def fold(model: nn.Module, names: Sequence[str]) -> None:
    """Puts each ``ConvNorm`` back as its conv with the BatchNorm folded in."""
    for name in names:
        _set(model, name, model.get_submodule(name).folded())


def kept_moments(
    moments: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], plan: Mapping[str, Any]
) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """The unpruned network's moments of the outputs each conv kept
    (``plan["kept_outputs"]``; a layer it does not name kept them all)."""
    out = {}
    for name, (mean, std) in moments.items():
        kept = (plan.get("kept_outputs") or {}).get(name)
        idx = torch.as_tensor(list(kept), dtype=torch.int64) if kept is not None else torch.arange(mean.numel())
        out[name] = (mean[idx], std[idx])
    return out


def correct_folded(
    pruned: nn.Module, base: nn.Module, plan: Mapping, batches: Iterable[Any], progress: bool = False
) -> Dict[str, Any]:
    """Each conv of ``pruned`` (in place) gets, channel by channel, the output
    mean and standard deviation of ``base`` on ``batches`` (read twice: pass
    a list or a re-iterable), through BatchNorm re-estimation on the
    unfolded network.  Returns ``{"corrected": convs, "images": n}``."""
    convs = [n for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return {"corrected": 0, "images": 0}
    moments = kept_moments(output_moments(base, batches, convs), plan)
    names = unfold(pruned, moments)
    try:
        images = recalibrate_batchnorm(pruned, batches, progress=progress)
    finally:
        fold(pruned, names)
    return {"corrected": len(names), "images": images}
