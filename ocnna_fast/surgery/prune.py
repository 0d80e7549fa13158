"""Pruning by a rule (docs/scoring.md §4): the percentile (or count) rule
applied per coupled group, then the physically smaller copy of the model,
and the plan that records what was removed.

Dependency tracking is Torch-Pruning's ``DependencyGraph``
(``selection.groups``): it finds the channels that must go together
(residual additions, concatenations, depthwise couplings).  The rules and a
group's values are ``selection.rules``; plans on disk are ``plans``.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.module_state import restore_training_flags, training_flags
from ..scoring.scores import LayerScores
from ..selection.groups import channel_groups, dependency_graph, torch_pruning
from ..selection.rules import (
    DEFAULT_CRITERION,
    FAMILY,
    SELECTION_RULES,
    check_k,
    group_values,
    kept_count,
    select_blocks,
)
from .channel_maps import ChannelMaps
from .plans import PLAN_FORMAT, PLAN_VERSION, layer_table

__all__ = ["prune", "count_params", "model_ignored_layers"]

PathLike = Union[str, os.PathLike]


def count_params(model: nn.Module) -> int:
    """All parameters, classifier included (the denominator of the RPR)."""
    return sum(p.numel() for p in model.parameters())


def model_ignored_layers(model: nn.Module, scope: Optional[str] = None) -> List[nn.Module]:
    """The layers ``model`` asks to leave whole: what its
    ``ocnna_ignored_layers()`` returns (given ``scope`` when one is named),
    none without that method.  The one place the hook is read."""
    hook = getattr(model, "ocnna_ignored_layers", None)
    if not callable(hook):
        return []
    return list(hook() if scope is None else hook(scope))


def prune(
    model: nn.Module,
    scores: Optional[Mapping[str, LayerScores]],
    k: Optional[float],
    example_inputs: torch.Tensor,
    ignored_layers: Optional[Iterable[Union[str, nn.Module]]] = None,
    *,
    importance: Union[None, Callable[[Any], Any], Mapping[str, Any]] = None,
    rule: str = "percentile",
    criterion: str = DEFAULT_CRITERION,
    keep: Optional[Mapping[str, int]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A physically smaller copy of ``model`` with OCNNA's selection applied.

    Args:
        model: the trained model (not modified).
        scores: ``Scores`` (or any mapping name -> LayerScores) for its convs.
        k: percentile in [0, 100): in each channel group, channels scoring
            below the k-th percentile are removed (``k=0`` keeps everything).
        example_inputs: a batch the model accepts, used to trace dependencies.
        ignored_layers: modules or names whose output channels stay (default:
            what the model's ``ocnna_ignored_layers()`` names; only convs are
            roots, so the classifier's outputs always stay).
        importance: rank each group by another criterion instead of the
            scores: a callable taking a Torch-Pruning group (of the copy being
            pruned) and returning one value per channel of its root, higher =
            keep (any ``torch_pruning.importance`` object qualifies), or a
            mapping from each group root's name to those values.  The
            groups pruned are the same as with scores: those holding a
            prunable conv (``scores`` may then be ``None``).
        criterion: which of the scores' statistics rank the filters
            (``FAMILY``): ``"ocnna"`` (the paper's std/mean, default),
            ``"mean-energy"`` or ``"ocnna-rms"`` (see docs/scoring.md).
        rule: ``"percentile"`` (docs/scoring.md §4, default) or ``"count"``
            (the same channels, ties broken by index; kept for older code).
        keep: per group root, how many channels stay (the highest-ranked)
            instead of the rule: a budget allocation's widths.  Groups it
            does not name follow ``k`` (``k=None``: they stay whole).

    Returns ``(pruned_model, plan)``; ``plan`` is JSON-serialisable and
    ``apply_plan(base, plan)`` rebuilds the same architecture.
    """
    k = _check_args(0 if k is None and keep is not None else k, criterion, rule, scores, importance, example_inputs)
    pruned = copy.deepcopy(model).eval()
    by_name = dict(pruned.named_modules())
    ignored = _ignored_in_copy(model, by_name, ignored_layers)
    scores = _scores_of(scores, by_name)
    DG = dependency_graph(pruned, example_inputs)
    names = {m: n for n, m in by_name.items()}
    decisions = []
    for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        values = group_values(group, DG, names, scores, importance, criterion)
        if values is not None:
            decisions.append(_decide(group, names, values, k, keep))
    maps = _apply(pruned, DG, names, decisions)
    plan = _make_plan(model, pruned, decisions, k, example_inputs)
    plan["channel_maps"] = maps.as_dict()
    plan["kept_outputs"] = maps.kept_outputs()  # per layer that lost outputs (folded-BatchNorm correction)
    _verify(pruned, example_inputs, model)
    return pruned, plan


def _scores_of(scores, by_name: Dict[str, nn.Module]) -> Mapping[str, Any]:
    """The scores, checked against the model's layer names; without scores
    (an importance ranks), the prunable convs say which groups are pruned."""
    if scores is None:
        return {n: None for n, m in by_name.items() if isinstance(m, nn.Conv2d) and m.groups == 1}
    missing = [n for n in scores if n not in by_name]
    if missing:
        raise ValueError(f"scores name layers the model does not have: {missing[:5]}")
    return scores


def _check_args(k, criterion, rule, scores, importance, example_inputs) -> float:
    k = check_k(k)
    if criterion not in FAMILY:
        raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if scores is None and importance is None:
        raise ValueError("pass scores, or an importance to rank the groups by")
    if not isinstance(example_inputs, torch.Tensor):
        raise TypeError("example_inputs must be a tensor batch the model accepts")
    return k


def _ignored_in_copy(model: nn.Module, by_name: Dict[str, nn.Module], ignored_layers) -> List[nn.Module]:
    """The copy's modules that ``ignored_layers`` names (modules of the
    original or names); default, what the model's own hook names."""
    if ignored_layers is None:
        return model_ignored_layers(by_name[""])
    ignored = []
    original = {m: n for n, m in model.named_modules()}
    for item in ignored_layers:
        name = item if isinstance(item, str) else original.get(item)  # a module of the original: by its name
        if name not in by_name:
            raise ValueError(f"ignored layer {item!r} is not a module of the model")
        ignored.append(by_name[name])
    return ignored


def _decide(group, names, values: np.ndarray, k: float, keep: Optional[Mapping[str, int]]) -> Dict[str, Any]:
    """The group's entry of the plan: its root, width and removed channels;
    as many kept as ``keep`` names for the root, else as the percentile rule keeps."""
    root, width = names[group[0][0].target.module], len(group[0][1])
    blocks = channel_groups(group)
    if keep is not None and root in keep:
        count = keep[root]
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= width:
            raise ValueError(f"keep[{root!r}] must be a count in [1, {width}], got {count!r}")
    else:
        count = blocks * kept_count(width // blocks, k)
    if count < width and width > 1 and np.ptp(values) == 0:
        warnings.warn(
            f"group {root!r}: all {width} channels score the same ({values[0]:g}), so the "
            "ones removed are the highest-numbered; score on more images (the coefficient of "
            "variation of one image is 0) or use another criterion",
            stacklevel=3,
        )
    kept = select_blocks(values, int(count), root, blocks)
    decision = {"root": root, "channels": width, "removed": sorted(set(range(width)) - set(kept.tolist()))}
    if blocks > 1:
        decision["blocks"] = blocks  # removed positions repeat in each block (a grouped conv)
    return decision


def _apply(pruned: nn.Module, DG, names, decisions) -> ChannelMaps:
    """Removes each decision's channels from ``pruned`` through its group,
    recording the channel maps."""
    tp = torch_pruning()
    by_name = {n: m for m, n in names.items()}
    maps = ChannelMaps(pruned)
    for d in decisions:
        if d["removed"]:
            g = DG.get_pruning_group(by_name[d["root"]], tp.prune_conv_out_channels, idxs=d["removed"])
            if not DG.check_pruning_group(g):
                raise ValueError(f"Torch-Pruning refused to prune group rooted at {d['root']!r}")
            maps.record(g, DG, names)
            g.prune()
    return maps


def _make_plan(base: nn.Module, pruned: nn.Module, decisions, k, example_inputs) -> Dict[str, Any]:
    before, after = layer_table(base), layer_table(pruned)
    kept = {}
    for d in decisions:
        kept[d["root"]] = sorted(set(range(d["channels"])) - set(d["removed"]))
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "k": k,
        "input_shape": list(example_inputs.shape[1:]),
        "groups": decisions,
        "kept": kept,  # kept output channel indices per group root
        "layers_before": before,
        "layers_after": after,
        "params_before": count_params(base),
        "params_after": count_params(pruned),
    }


def _verify(pruned: nn.Module, example_inputs: torch.Tensor, base: nn.Module) -> None:
    flags = training_flags(base)  # the caller's model leaves as it came
    try:
        with torch.no_grad():
            out = pruned(example_inputs)
            ref = base.eval()(example_inputs)
    finally:
        restore_training_flags(flags)
    if isinstance(out, torch.Tensor) and out.shape != ref.shape:
        raise RuntimeError(f"pruned model output shape {tuple(out.shape)} differs from {tuple(ref.shape)}")
