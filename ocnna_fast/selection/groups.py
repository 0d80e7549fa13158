"""Torch-Pruning's dependency graph as pruning and the criteria use it: the
graph of a model (with the pruning functions the model declares for its own
modules), and what a group of coupled channels holds."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.module_state import restore_training_flags, training_flags

__all__ = [
    "dependency_graph",
    "conv_groups",
    "feeds_output",
    "channel_groups",
    "out_channel_convs",
    "torch_pruning",
]


def torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("pruning needs Torch-Pruning: pip install torch-pruning") from exc
    return tp


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model``, with the pruning
    functions the model declares for its own modules (``ocnna_pruners()``,
    e.g. the CIFAR ResNets' option-A shortcut)."""
    tp = torch_pruning()
    hook = getattr(model, "ocnna_pruners", None)
    custom = hook() if callable(hook) else None
    try:
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, customized_pruners=custom)
    except ZeroDivisionError as exc:
        # Torch-Pruning's index mapping of a reshape divides by the channels
        # it can follow; a reshape that interleaves channels leaves none
        raise ValueError(
            f"{type(model).__name__}: Torch-Pruning cannot map channels through a reshape of the channel axis "
            "(a channel shuffle: view -> transpose -> view, as in ShuffleNet, or a reshape that changes the "
            "channel count), so this model cannot be pruned structurally. score() still works on it; to prune, "
            "apply prune() to sub-modules without that reshape, or replace it with a module Torch-Pruning can "
            "follow."
        ) from exc
    _refuse_untraced(model, example_inputs, DG)
    return DG


def conv_groups(
    model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[Union[nn.Module, str]] = ()
) -> Tuple[nn.Module, Any, Dict[nn.Module, str], List[Tuple[str, Any]]]:
    """On an eval-mode copy of ``model`` (the graph's surgery must not touch
    the original): ``(copy, graph, names of the copy's modules, [(root conv
    name, group)])`` for every group rooted at a conv, the ``ignored``
    modules (of ``model``, or names) left out."""
    work = copy.deepcopy(model).eval()
    names = {m: n for n, m in work.named_modules()}
    by_name = dict(work.named_modules())
    original = {m: n for n, m in model.named_modules()}
    skip = [by_name[m] if isinstance(m, str) else by_name[original[m]] for m in ignored]
    dg = dependency_graph(work, example_inputs)
    groups = dg.get_all_groups(ignored_layers=skip, root_module_types=[nn.Conv2d])
    return work, dg, names, [(names[g[0][0].target.module], g) for g in groups]


def _refuse_untraced(model: nn.Module, example_inputs: torch.Tensor, DG: Any) -> None:
    """Torch-Pruning traces back from the outputs, so a conv or linear layer
    that runs but whose result the model never uses is not in the graph:
    pruning its input channels' producer would leave it with the old width
    (and a shape error at the next forward).  Such layers are refused by name."""
    ran: List[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: ran.append(names[mod]))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in DG.module2node
    ]
    if not hooks:
        return
    flags = training_flags(model)
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        restore_training_flags(flags)
    if ran:
        raise ValueError(
            f"layers {sorted(set(ran))[:5]} compute outputs the model never uses, so Torch-Pruning cannot follow "
            "their channels and pruning would break them; remove them from forward() (or use their outputs)"
        )


def feeds_output(group) -> bool:
    """Whether a Torch-Pruning group's channels reach the model's output
    unchanged in number (e.g. a conv classifier's logits): such channels are
    never pruned, whatever the layer type."""
    return any(type(dep.target.module).__name__ == "_OutputOp" for dep, _ in group)


def channel_groups(group) -> int:
    """How many equal blocks the group's channels split into because a
    grouped (not depthwise) conv produces or consumes them: a removal must
    take the same positions from every block, or the grouped conv cannot
    be rebuilt.  1 when no grouped conv is involved."""
    blocks = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            blocks = int(np.lcm(blocks, m.groups))
    return blocks


def out_channel_convs(group: Any, dg: Any = None) -> Iterator[Tuple[nn.Conv2d, List[int]]]:
    """``(conv, channel indices)`` of each conv of a Torch-Pruning group whose
    output channels the group removes over its whole width: the members whose
    scores rank the group (docs/scoring.md §4).  Without ``dg`` (a group built outside a
    DependencyGraph) every conv over the whole width counts."""
    width = len(group[0][1])
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Conv2d) or len(idxs) != width:
            continue
        if dg is not None and not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        yield mod, [int(i) for i in idxs]
