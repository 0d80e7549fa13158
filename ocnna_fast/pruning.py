"""OCNNA selection and structural surgery (docs/scoring.md §4).

Dependency tracking is Torch-Pruning's ``DependencyGraph`` (``graph``): it
finds the groups of channels that must go together (residual additions,
concatenations, depthwise couplings).  What is ours, here: the group score
from OCNNA scores, the percentile rule and the plan that records the result.
Plans on disk (save, load, replay on a fresh model) are ``plans``; their
names are importable from here too.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .channel_maps import ChannelMaps
from .graph import channel_groups, dependency_graph, feeds_output, out_channel_convs, torch_pruning
from .module_state import restore_training_flags, training_flags
from .plans import (
    PLAN_DIGEST,
    PLAN_FORMAT,
    PLAN_VERSION,
    apply_plan,
    layer_table,
    load_pruned,
    read_plan,
    save_pruned,
    set_model_builder,
)
from .scores import LayerScores
from .validate import percentile

__all__ = [
    "PLAN_DIGEST",
    "prune",
    "apply_plan",
    "save_pruned",
    "load_pruned",
    "read_plan",
    "set_model_builder",
    "out_channel_convs",
    "count_params",
    "group_scores",
    "group_values",
    "select_channels",
    "select_top",
    "kept_count",
    "SELECTION_RULES",
    "FAMILY",
    "layer_values",
    "feeds_output",
    "channel_groups",
    "dependency_graph",
]

PathLike = Union[str, os.PathLike]


def count_params(model: nn.Module) -> int:
    """All parameters, classifier included (the denominator of the RPR)."""
    return sum(p.numel() for p in model.parameters())


def select_channels(group_score: np.ndarray, k: float, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) to keep under docs/scoring.md §4's percentile rule: as many
    channels as lie at or above the k-th percentile (NumPy ``percentile``,
    linear interpolation) of distinct scores, ``kept_count(width, k)``, taken
    in order of score, ties broken by the lower channel index; never none.

    The count does not depend on ties: a threshold test (``score >=
    percentile``) would keep every tied channel, so a layer whose scores are
    all equal (one scoring image, or many dead filters) would lose nothing
    whatever ``k``.  Non-finite scores are refused (a NaN would make the
    order meaningless), naming the group ``name``."""
    s = _finite_vector(group_score, name)
    return select_top(s, kept_count(s.size, k), name=name)


def _finite_vector(values: Any, name: Optional[str]) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64)
    where = f"group {name!r}" if name else "group"
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{where}: scores must be a non-empty 1-D array")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s))
        raise ValueError(f"{where}: non-finite scores at channels {bad[:8].tolist()}; rescore the layer")
    return s


SELECTION_RULES = ("percentile", "count")


def kept_count(width: int, k: float) -> int:
    """How many of ``width`` distinct values the percentile rule keeps: those
    at or above position ``k/100 * (width - 1)`` of the sorted values."""
    return width - int(np.ceil(_check_k(k) / 100.0 * (width - 1) - 1e-9))


def select_top(values: np.ndarray, count: int, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) of the ``count`` highest values, ties broken by the
    lower index; non-finite values refused as in ``select_channels``."""
    s = _finite_vector(values, name)
    if not 1 <= count <= s.size:
        raise ValueError(f"cannot keep {count} of {s.size} channels")
    order = np.lexsort((np.arange(s.size), -s))  # by value descending, then index
    return np.sort(order[:count])


# OCNNA-family rankings of one layer's filters, all from the scorer's streamed
# statistics (higher = keep).  "ocnna" is the paper's coefficient of
# variation; the others keep the filter's scale, which the CV divides away.
FAMILY = {
    "ocnna": lambda ls: ls.score,
    "mean-energy": lambda ls: ls.mean,
    # sqrt(E[F^2]): the root-mean-square norm of the filter's PCA-transformed
    # map over the images, i.e. the output energy the filter carries
    "ocnna-rms": lambda ls: torch.sqrt(ls.mean**2 + ls.std**2),
}


def layer_values(ls: LayerScores, criterion: str = "ocnna") -> np.ndarray:
    """One layer's per-filter values under an OCNNA-family ``criterion``."""
    if criterion not in FAMILY:
        raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
    return FAMILY[criterion](ls).double().numpy()


def group_scores(members: Sequence[Tuple[LayerScores, Sequence[int]]], criterion: str = "ocnna") -> np.ndarray:
    """docs/scoring.md §4: a group with one scored layer ranks by that layer's values; a
    group spanning several layers (our reading) by the mean over them of each
    layer's values divided by that layer's mean value.  ``criterion`` picks
    the values (``FAMILY``; default OCNNA's score)."""
    if len(members) == 1:
        ls, idxs = members[0]
        return layer_values(ls, criterion)[list(idxs)]
    parts = []
    for ls, idxs in members:
        s = layer_values(ls, criterion)
        m = s.mean()
        parts.append(s[list(idxs)] / m if m > 0 else np.zeros(len(idxs)))
    return np.mean(parts, axis=0)


def _check_k(k: float) -> float:
    return percentile(k)


def _default_ignored(model: nn.Module) -> List[nn.Module]:
    hook = getattr(model, "ocnna_ignored_layers", None)
    return list(hook()) if callable(hook) else []


def _select(values: np.ndarray, count: int, name: str, blocks: int) -> np.ndarray:
    """Kept channel indices: the ``count`` highest-valued.  With ``blocks > 1``
    a position within a block is ranked by its mean value over the blocks
    and kept or removed in all of them (how grouped convs stay valid);
    ``count`` is then a multiple of ``blocks``."""
    width = len(values)
    if blocks > 1:
        if width % blocks or count % blocks:
            raise ValueError(f"group {name!r}: {width} channels (keeping {count}) do not split into {blocks} blocks")
        per = values.reshape(blocks, width // blocks).mean(axis=0)
        keep = _select(per, count // blocks, name, 1)
        return np.sort(np.concatenate([keep + b * (width // blocks) for b in range(blocks)]))
    return select_top(values, count, name=name)


def prune(
    model: nn.Module,
    scores: Optional[Mapping[str, LayerScores]],
    k: Optional[float],
    example_inputs: torch.Tensor,
    ignored_layers: Optional[Iterable[Union[str, nn.Module]]] = None,
    *,
    importance: Union[None, Callable[[Any], Any], Mapping[str, Any]] = None,
    rule: str = "percentile",
    criterion: str = "ocnna",
    keep: Optional[Mapping[str, int]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A physically smaller copy of ``model`` with OCNNA's selection applied.

    Args:
        model: the trained model (not modified).
        scores: ``Scores`` (or any mapping name -> LayerScores) for its convs.
        k: percentile in [0, 100): in each channel group, channels scoring
            below the k-th percentile are removed (``k=0`` keeps everything).
        example_inputs: a batch the model accepts, used to trace dependencies.
        ignored_layers: modules or names whose output channels stay (the
            classifier's outputs are never pruned: only convs are roots).
            Default: what the model's ``ocnna_ignored_layers()`` names, if any.
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
        rule: ``"percentile"`` (docs/scoring.md §4, default) or ``"count"``, which
            since ties are broken by channel index select the same channels
            (``"count"`` stays accepted for code written before).
        keep: per group root, how many channels stay (the highest-ranked),
            instead of the percentile rule: the widths a budget allocation
            chose (``ocnna_fast.allocation``).  Groups it does not name follow
            ``k`` (``k=None``: they stay whole).

    Returns:
        ``(pruned_model, plan)``; ``plan`` is JSON-serialisable and
        ``apply_plan(base, plan)`` rebuilds the same architecture.
    """
    k = _check_args(0 if k is None and keep is not None else k, criterion, rule, scores, importance, example_inputs)
    pruned = copy.deepcopy(model).eval()
    by_name = dict(pruned.named_modules())
    ignored = _ignored_in_copy(model, by_name, ignored_layers)
    if scores is None:  # an importance ranks; the prunable convs say which groups are pruned
        scores = {n: None for n, m in by_name.items() if isinstance(m, nn.Conv2d) and m.groups == 1}
    missing = [n for n in scores if n not in by_name]
    if missing:
        raise ValueError(f"scores name layers the model does not have: {missing[:5]}")
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


def _check_args(k, criterion, rule, scores, importance, example_inputs) -> float:
    k = _check_k(k)
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
        return _default_ignored(by_name[""])
    ignored = []
    original = {m: n for n, m in model.named_modules()}
    for item in ignored_layers:
        name = item if isinstance(item, str) else original.get(item)  # a module of the original: by its name
        if name not in by_name:
            raise ValueError(f"ignored layer {item!r} is not a module of the model")
        ignored.append(by_name[name])
    return ignored


def group_values(group, DG, names, scores, importance=None, criterion: str = "ocnna") -> Optional[np.ndarray]:
    """One value per channel of the group (higher = keep), or ``None`` for a
    group that stays whole: no scored conv decides it, or its channels are
    the model's outputs (a conv classifier's logits keep their number)."""
    width = len(group[0][1])
    members = []
    for mod, idxs in out_channel_convs(group, DG):
        name = names.get(mod)
        if name in scores:
            ls = scores[name]
            if ls is not None and ls.num_channels != mod.out_channels:
                raise ValueError(
                    f"scores for {name!r} have {ls.num_channels} channels, the layer has {mod.out_channels}"
                )
            members.append((ls, idxs))
    if not members or feeds_output(group):
        return None
    if importance is None:
        return group_scores(members, criterion)
    root = names[group[0][0].target.module]
    values = importance.get(root) if isinstance(importance, Mapping) else importance(group)
    if values is None:
        raise ValueError(f"the importance returned no values for group {root!r}")
    values = torch.as_tensor(values).detach().double().cpu().numpy().reshape(-1)
    if values.shape != (width,):
        raise ValueError(f"the importance gave {values.shape[0]} values for group {root!r} of {width} channels")
    return values


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
    kept = _select(values, int(count), root, blocks)
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
