"""Least-squares reconstruction of a pruned network's layers, for networks
whose BatchNorm is folded into their convs (nothing to re-estimate, no
distillation asked).

After surgery a layer sees fewer (and, downstream of other cuts, altered)
inputs.  Layer by layer in execution order, each layer's weights are
refitted so that, on calibration images, its outputs through the *pruned*
network come as close as least squares allows to the outputs the *unpruned*
network produced there (the reconstruction step of channel pruning by He,
Zhang and Sun, ICCV 2017, and of ThiNet, applied here after the structure is
chosen).  Dense layers whose output at a position depends on the input at
that position only (1x1 convs with stride 1 and no padding, linear layers)
get a ridge-regularised regression over all their kept inputs plus a bias;
depthwise convs, whose channels do not mix, get a per-channel scale and
shift.  Other layers are left as they are (the moment correction of
``foldedbn`` still applies to them).

The statistics are streamed: per layer, the Gram matrix of the pruned
inputs and their cross-products with the unpruned outputs, summed over
batches; a pass of both networks stops at the layer being fitted.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .module_state import restore_training_flags, training_flags
from .placement import input_of

__all__ = ["reconstruct", "input_at", "ridge_solve", "RIDGE"]

# The ridge, relative to the mean input energy: small enough to leave a
# well-determined fit alone, large enough to keep a nearly constant input
# (a channel ReLU6 clips everywhere) from blowing up its weight.
RIDGE = 1e-3


class _Stop(Exception):
    """Raised by a hook once the layer being fitted has its input."""


def _kind(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.Linear):
        return "dense"
    if not isinstance(m, nn.Conv2d):
        return None
    pointwise = m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid")
    if m.groups == 1 and pointwise:
        return "dense"
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
        return "depthwise"
    return None


def input_at(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s input when ``model`` runs on ``x`` (the pass stops there;
    the caller chooses grad mode)."""
    got: List[torch.Tensor] = []

    def pre(_m, args):
        got.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(pre)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise ValueError("a layer to reconstruct did not run on the calibration batches")
    return got[0]


def _rows(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """One row per position, one column per channel, in float64: a conv's
    (N, C, H, W), or a linear layer's (..., C)."""
    if not channels_last:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1, t.shape[-1]).double()


def _execution_order(model: nn.Module, x: torch.Tensor) -> List[str]:
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    order: List[str] = []
    handles = [m.register_forward_pre_hook(lambda m, _a: order.append(names[m])) for m in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def _kept(plan: Mapping[str, Any], name: str, n: int) -> torch.Tensor:
    kept = (plan.get("kept_outputs") or {}).get(name)
    return torch.as_tensor(list(kept), dtype=torch.int64) if kept is not None else torch.arange(n)


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """The weights ``w`` (outputs x inputs, the last input the constant 1)
    minimising the squared error plus ``ridge`` x the mean input energy x
    ``|w|^2`` over all but the bias column, from the Gram matrix of the
    inputs and the outputs' cross-products with them."""
    penalty = torch.ones(gram.shape[0], dtype=gram.dtype)
    penalty[-1] = 0.0  # the bias is not shrunk
    scale = ridge * float(gram.diagonal()[:-1].mean().clamp_min(1e-12))
    return torch.linalg.solve(gram + scale * torch.diag(penalty), cross.T).T


def _fit_dense(old: nn.Module, new: nn.Module, pairs, kept: torch.Tensor, ridge: float) -> None:
    gram = cross = None
    linear = isinstance(old, nn.Linear)
    for x_old, x_new in pairs:
        y = _rows(old(x_old), linear)[:, kept]
        xs = _rows(x_new, linear)
        xs = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype)], 1)
        g, c = xs.T @ xs, y.T @ xs
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    w = ridge_solve(gram, cross, ridge)
    _assign(new, w[:, :-1], w[:, -1])


def _fit_depthwise(old: nn.Module, new: nn.Module, pairs, kept: torch.Tensor) -> None:
    s = None
    for x_old, x_new in pairs:
        y_old, y_new = _rows(old(x_old), False)[:, kept], _rows(new(x_new), False)
        t = torch.stack([y_new.sum(0), y_old.sum(0), (y_new * y_new).sum(0), (y_new * y_old).sum(0)])
        s = (t, y_new.shape[0]) if s is None else (s[0] + t, s[1] + y_new.shape[0])
    m_new, m_old, e_nn, e_no = s[0] / s[1]  # means over positions: y, y_base, y^2, y * y_base
    var = e_nn - m_new * m_new
    a = torch.where(var > 1e-12, (e_no - m_new * m_old) / var.clamp_min(1e-12), torch.ones_like(var))
    bias = new.bias.detach().double() if new.bias is not None else torch.zeros_like(a)
    w = new.weight.detach().double() * a.view(-1, 1, 1, 1)
    _assign(new, w, a * bias + m_old - a * m_new)


def _assign(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    w = layer.weight
    with torch.no_grad():
        w.copy_(weight.reshape(w.shape).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        layer.bias.copy_(bias.to(w.dtype))


def reconstruct(
    pruned: nn.Module,
    base: nn.Module,
    plan: Mapping[str, Any],
    batches: Iterable[Any],
    *,
    ridge: float = RIDGE,
    progress: bool = False,
) -> Dict[str, Any]:
    """Refits, in place, every layer of ``pruned`` downstream of the first
    cut (see the module's text) to the outputs of ``base`` on ``batches``
    (held in memory once read: each layer passes over them again, each
    pass stopping at the layer).
    ``plan``: what ``prune`` returned (``kept_outputs`` by layer name).
    Returns ``{"reconstructed": dense layers, "rescaled": depthwise convs,
    "images": n}``."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    inputs = [input_of(b) for b in batches]
    if not inputs:
        raise ValueError("reconstruction needs calibration batches")
    flags = training_flags(pruned), training_flags(base)
    pruned.eval(), base.eval()
    old_modules, new_modules = dict(base.named_modules()), dict(pruned.named_modules())
    counts = {"reconstructed": 0, "rescaled": 0}
    try:
        with torch.no_grad():
            order = _execution_order(pruned, inputs[0][:1])
            cut = [i for i, n in enumerate(order) if n in (plan.get("kept_outputs") or {})]
            todo: List[Tuple[str, str]] = []
            for name in order[cut[0] + 1 :] if cut else []:
                kind = _kind(new_modules[name])
                if kind is not None and name in old_modules:
                    todo.append((name, kind))
            steps: Any = todo
            if progress and todo:
                from tqdm.auto import tqdm

                steps = tqdm(todo, desc="reconstruct", unit="layer")
            for name, kind in steps:
                old, new = old_modules[name], new_modules[name]
                pairs = ((input_at(base, old, x), input_at(pruned, new, x)) for x in inputs)
                kept = _kept(plan, name, old.weight.shape[0])
                if kind == "dense":
                    _fit_dense(old, new, pairs, kept, ridge)
                else:
                    _fit_depthwise(old, new, pairs, kept)
                counts["reconstructed" if kind == "dense" else "rescaled"] += 1
    finally:
        restore_training_flags(flags[0])
        restore_training_flags(flags[1])
    return {**counts, "images": sum(int(x.shape[0]) for x in inputs)}
