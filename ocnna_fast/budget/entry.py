"""``ocnna_fast.prune``: the Python entry point of pruning, by the paper's
percentile rule or to a budget, from scores (or any per-group values) and
the images the budget's search measures on."""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.placement import placement
from .._util.validate import input_batches_of
from ..selection.groups import conv_groups
from ..selection.rules import DEFAULT_CRITERION, group_values
from ..surgery import prune as surgery
from ..surgery.prune import model_ignored_layers
from .latency import LatencyRatio
from .search import ALLOCATION_MEMO, prune_to_budget
from .spec import BUDGET_FIELDS, PruneSpec

__all__ = ["prune", "score_values"]


def score_values(
    model: nn.Module, scores: Mapping[str, Any], example: torch.Tensor, criterion: str = DEFAULT_CRITERION
) -> Dict[str, np.ndarray]:
    """Per group root, the values ``prune`` ranks a group by from scores (docs/scoring.md §4's coupled-group rule)."""
    _, dg, names, groups = conv_groups(model, example)
    out = {}
    for root, g in groups:
        v = group_values(g, dg, names, scores, None, criterion)
        if v is not None:
            out[root] = v
    return out


def prune(
    model: nn.Module,
    scores: Optional[Mapping[str, Any]],
    k: Optional[float] = None,
    example_inputs: Optional[torch.Tensor] = None,
    ignored_layers: Optional[Sequence[Any]] = None,
    *,
    target: Any = None,
    calibration: Any = None,
    evaluation: Any = None,
    measure: Optional[Callable[[nn.Module], float]] = None,
    progress: bool = False,
    seed: int = 0,
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    device: Union[None, str, torch.device] = None,
    **options: Any,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A physically smaller copy of ``model`` (left unchanged), by the
    paper's percentile rule (``k``; ``surgery.prune.prune`` lists its options)
    or to a budget (``target="macs=0.5"``, ``{"params": 0.3}``,
    ``"latency=0.6"``) with ``PruneSpec``'s options and defaults
    (``allocation``, ``round_to``, ``max_prune``, ``cap_search``,
    ``refine_steps``, ``search``, ``criterion``; or ``importance``, group
    roots to values).  The sensitivity allocation reads up to
    ``sensitivity_images`` (512) images from ``calibration`` and
    ``evaluation`` (a tensor or any iterable of batches, a ``DataLoader``
    included); ``example_inputs`` defaults to their first.  The budget is met
    within 2% or refused (latency: 5% over at most, by ``measure``);
    ``plan["budget"]`` says what was reached.  ``seed`` draws the search's
    moves; ``checkpoint_dir`` keeps its measured losses, so it resumes.
    ``device``: where the search runs (default: where ``model`` is; elsewhere
    on a copy); the pruned model is returned where ``model`` is."""
    home, run = placement(model, device)
    work = model if run == home else copy.deepcopy(model).to(run)  # elsewhere: on a copy
    if work is not model and ignored_layers is not None:
        ignored_layers = _same_in(work, model, ignored_layers)
    budget = {name: options.pop(name) for name in BUDGET_FIELDS if name in options}
    limit = budget.get("sensitivity_images", PruneSpec.sensitivity_images)
    calibration = input_batches_of(calibration, "calibration", limit)
    evaluation = input_batches_of(evaluation, "evaluation", limit)
    example = _example(example_inputs, evaluation, calibration).to(run)
    if target is None:
        if k is None:
            raise ValueError("give k (the percentile rule) or target (a budget, e.g. {'macs': 0.5})")
        if budget:
            raise ValueError(
                f"{', '.join(sorted(budget))}: only a target budget uses them; k removes a share of every group"
            )
        pruned, plan = surgery.prune(work, scores, k, example, ignored_layers, **options)
        return pruned.to(home), plan
    spec, values = _budget_spec(work, scores, k, example, target, budget, options)
    ignored = list(ignored_layers) if ignored_layers is not None else model_ignored_layers(work)
    if measure is None and spec.target_kind == "latency":
        measure = LatencyRatio(work, int(example.shape[-1]))
    result = prune_to_budget(
        work, values, example, spec, ignored_layers=ignored, calibration=calibration,
        evaluation=evaluation, measure=measure, progress=progress, seed=seed, memo=_memo_in(checkpoint_dir),
    )  # fmt: skip
    return result.pruned.to(home), result.plan


def _same_in(work: nn.Module, model: nn.Module, layers: Sequence[Any]) -> List[Any]:
    """``model``'s modules among ``layers`` as the modules of the same name in its copy ``work``."""
    names = {id(m): n for n, m in model.named_modules()}
    copies = dict(work.named_modules())
    return [copies[names[id(m)]] if id(m) in names else m for m in layers]


def _budget_spec(model, scores, k, example, target, budget, options):
    """The budget's ``PruneSpec`` from the keywords, and the values it ranks each group by."""
    if {"latency_runtime", "latency_batch"} & budget.keys():
        raise TypeError("in Python, give a latency target's measurement as measure= (LatencyRatio)")
    importance = options.pop("importance", None)
    if options.keys() - {"criterion"}:
        raise TypeError(f"prune(target=...) does not take {sorted(options.keys() - {'criterion'})}")
    spec = PruneSpec(k=k, target=target, **budget, **options)
    if importance is not None and not isinstance(importance, Mapping):
        raise TypeError("with a target, importance is a mapping of group root names to values")
    return spec, importance if importance is not None else score_values(model, scores, example, spec.criterion)


def _example(example_inputs, evaluation, calibration) -> torch.Tensor:
    """``example_inputs``, or the first image of the images given."""
    if example_inputs is not None:
        return example_inputs
    first = next((b for b in (*(evaluation or ()), *(calibration or ())) if b.shape[0]), None)
    if first is None:
        raise TypeError("prune() needs example_inputs, a batch the model accepts (or images to take it from)")
    return first[:1]


def _memo_in(checkpoint_dir) -> Optional[str]:
    """The measured losses' file in ``checkpoint_dir`` (created), or ``None``."""
    if checkpoint_dir is None:
        return None
    os.makedirs(checkpoint_dir, exist_ok=True)
    return os.path.join(checkpoint_dir, ALLOCATION_MEMO)
