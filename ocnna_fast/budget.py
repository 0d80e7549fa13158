"""Pruning to a budget: per-group widths (``allocation``) from the criterion's
values and, for the ``sensitivity`` method, each group's measured loss
curve (``sensitivity``), then surgery, checked against Torch-Pruning's own
count and corrected until the budget is met within 2%.

The allocation prices candidates with a cost model that is exact for the
weighted layers; activations, pooling and additions are counted only in the
check, so the internal target is rescaled by what the check reports (two or
three rounds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import pruning
from .allocation import (
    CostModel,
    GroupInfo,
    Target,
    allocate,
    allowed_widths,
    global_penalty,
    macs_and_params,
    parse_target,
)
from .graph import channel_groups, dependency_graph, feeds_output
from .pruning import group_values
from .sensitivity import MaskedEvaluator, group_outputs, measure_sensitivity, refine

__all__ = ["ALLOCATIONS", "BudgetResult", "prune", "prune_to_budget", "input_batches", "score_values"]

ALLOCATIONS = ("sensitivity", "global")
TOLERANCE = 0.02  # the reached ratio is within 2% of the target's


@dataclass
class BudgetResult:
    """What the allocation chose and what the surgery reached."""

    pruned: nn.Module
    plan: Dict[str, Any]
    keep: Dict[str, int]
    target: Target
    reached: float
    allocation: str
    rounds: int
    sensitivity: Optional[Dict[str, Any]] = None
    widths: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # root -> (before, after)


def _groups(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module], values: Mapping[str, Any]):
    """The groups ``prune`` ranks (those the values name, not feeding the
    model's outputs), on a copy of ``model``: (copy, graph, [(group, info)])."""
    work = copy.deepcopy(model).eval()
    names = {m: n for n, m in work.named_modules()}
    by_name = dict(work.named_modules())
    original = {m: n for n, m in model.named_modules()}
    dg = dependency_graph(work, example)
    found = []
    skip = [by_name[m] if isinstance(m, str) else by_name[original[m]] for m in ignored]
    for g in dg.get_all_groups(ignored_layers=skip, root_module_types=[nn.Conv2d]):
        root = names[g[0][0].target.module]
        if root in values and not feeds_output(g):
            width = len(g[0][1])
            v = values[root]
            v = np.zeros(width) if v is None else torch.as_tensor(v).double().cpu().numpy().reshape(-1)
            if v.shape != (width,):
                raise ValueError(f"{v.shape[0]} values for group {root!r} of {width} channels")
            found.append((g, GroupInfo(root, width, v, channel_groups(g))))
    return work, dg, names, found


def prune_to_budget(
    model: nn.Module,
    values: Mapping[str, Any],
    example: torch.Tensor,
    target: Any,
    *,
    ignored_layers: Sequence[nn.Module] = (),
    allocation: str = "sensitivity",
    round_to: int = 1,
    max_prune: float = 0.9,
    calibration: Optional[Sequence[torch.Tensor]] = None,
    evaluation: Optional[Sequence[torch.Tensor]] = None,
    measure: Optional[Callable[[nn.Module], float]] = None,
    refine_steps: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> BudgetResult:
    """A copy of ``model`` pruned to ``target`` (``"macs=0.5"``,
    ``{"params": 0.3}``, a ``Target``) with per-group widths from
    ``allocation``; within a group the highest ``values`` stay.
    ``sensitivity`` needs ``calibration`` and ``evaluation`` input batches;
    with ``refine_steps`` it then searches around the allocation on the loss
    of all groups masked together (seeded by ``seed``).
    ``measure(pruned) -> ratio`` checks the budget (default: Torch-Pruning's
    count of MACs or parameters)."""
    target = parse_target(target)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if target.kind == "latency" and measure is None:
        raise ValueError("a latency target needs measure= (the latency ratio of a pruned model)")
    work, dg, names, found = _groups(model, example, list(ignored_layers), values)
    if not found:
        raise ValueError("no prunable group: nothing to allocate")
    infos = [info for _, info in found]
    cost = CostModel(work, example, dg, [g for g, _ in found])
    curves = evaluator = None
    if allocation == "sensitivity":
        if not evaluation:
            raise ValueError("the sensitivity allocation needs evaluation images (and calibration images, or none)")
        outputs = [(info, group_outputs(g, dg, names)) for g, info in found]
        evaluator = MaskedEvaluator(model, outputs, calibration, evaluation)
        curves = measure_sensitivity(evaluator, progress=progress)
        penalty = curves.penalty
    else:
        penalty = global_penalty(infos)
    measure = measure or _counter(model, example, target.kind)
    kind = "macs" if target.kind == "latency" else target.kind  # latency is approached through MACs
    ceiling = target.ratio * (1 + TOLERANCE)  # a budget is met at or below it, within 2%

    def build(keep: Dict[str, int]):
        pruned, plan = pruning.prune(model, None, None, example, ignored_layers, importance=dict(values), keep=keep)
        return pruned, plan, keep, measure(pruned)

    def greedy(aim: float) -> Dict[str, int]:
        per_cost = allocation != "global"  # a global ranking compares values alone
        t = Target(kind, min(aim, 0.999))
        return allocate(infos, cost, t, penalty, round_to=round_to, max_prune=max_prune, per_cost=per_cost)

    best, rounds = _fit(greedy, build, target, ceiling, round_to, max_prune)
    pruned, plan, keep, reached = best
    search = None
    if evaluator is not None and refine_steps > 0:
        better = _refined(evaluator, infos, cost, kind, keep, round_to, max_prune, refine_steps, seed, progress)
        trial = build(better[0])
        search = {"steps": refine_steps, "loss_before": better[1], "loss_after": better[2]}
        if trial[3] <= ceiling:  # the search kept the cost model's price; the count confirms it
            pruned, plan, keep, reached = trial
    plan["budget"] = {"target": str(target), "reached": reached, "allocation": allocation, "round_to": round_to}
    widths = {i.root: (i.width, keep[i.root]) for i in infos}
    sensitivity = {**curves.as_dict(), "search": search, "evaluations": evaluator.evaluations} if curves else None
    return BudgetResult(pruned, plan, keep, target, reached, allocation, rounds, sensitivity, widths)


def _fit(greedy, build, target: Target, ceiling: float, round_to: int, max_prune: float):
    """Allocations at a rescaled internal target until the real count lands
    within 2% of the target (at most 8 rounds): the best build and the rounds."""
    aim, best, closest = target.ratio, None, None
    for rounds in range(1, 9):
        built = build(greedy(aim))
        reached = built[3]
        closest = reached if closest is None else min(closest, reached)
        if reached <= ceiling and (best is None or reached > best[3]):
            best = built
        if best is not None and best[3] >= target.ratio * (1 - TOLERANCE):
            break
        aim *= target.ratio / reached  # the check counts what the cost model leaves constant
    if best is None:
        raise ValueError(
            f"cannot meet {target}: the closest reached is {target.kind}={closest:.4f} "
            f"(widths multiple of {round_to}, at most {max_prune:.0%} of a group removed)"
        )
    return best, rounds


def _refined(evaluator, infos, cost: CostModel, kind: str, keep, round_to, max_prune, steps, seed, progress):
    """The allocation after a local search on the combined masked loss, at
    no more than its price by the cost model."""
    options = {i.root: allowed_widths(i.width, i.blocks, round_to, max_prune) for i in infos}
    widths = {i.root: i.width for i in infos}

    def price(k: Dict[str, int]) -> float:
        return cost.ratio({r: widths[r] - w for r, w in k.items()}, kind)

    budget = price(keep) + 1e-12
    return refine(evaluator, keep, options, lambda k: price(k) <= budget, steps, seed=seed, progress=progress)


def _counter(model: nn.Module, example: torch.Tensor, kind: str) -> Callable[[nn.Module], float]:
    """The pruned model's MACs or parameters over the base model's, by Torch-Pruning's counter."""
    size = int(example.shape[-1])
    base = macs_and_params(model, size)
    index = 0 if kind == "macs" else 1
    return lambda pruned: macs_and_params(pruned, size)[index] / base[index]


def input_batches(data: Any, batch_size: int, limit: int) -> List[torch.Tensor]:
    """Up to ``limit`` input images of a data set, as batches held in memory."""
    out, n = [], 0
    for x, _ in data.batches(batch_size):
        out.append(x[: limit - n])
        n += out[-1].shape[0]
        if n >= limit:
            break
    return out


def score_values(
    model: nn.Module, scores: Mapping[str, Any], example: torch.Tensor, criterion: str = "ocnna"
) -> Dict[str, np.ndarray]:
    """Per group root, the values ``prune`` ranks a group by from scores (SPEC 4's coupled-group rule)."""
    work = copy.deepcopy(model).eval()
    names = {m: n for n, m in work.named_modules()}
    dg = dependency_graph(work, example)
    out = {}
    for g in dg.get_all_groups(root_module_types=[nn.Conv2d]):
        v = group_values(g, dg, names, scores, None, criterion)
        if v is not None:
            out[names[g[0][0].target.module]] = v
    return out


def prune(
    model: nn.Module,
    scores: Optional[Mapping[str, Any]],
    k: Optional[float] = None,
    example_inputs: Optional[torch.Tensor] = None,
    ignored_layers: Optional[Sequence[Any]] = None,
    *,
    target: Any = None,
    allocation: str = "global",
    round_to: int = 1,
    max_prune: float = 0.9,
    calibration: Optional[Sequence[torch.Tensor]] = None,
    evaluation: Optional[Sequence[torch.Tensor]] = None,
    **kwargs: Any,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """``ocnna_fast.prune``: a physically smaller copy of ``model``, by the
    paper's percentile rule (``k``; see ``pruning.prune`` for every option)
    or to a budget (``target={"macs": 0.5}`` or ``"params=0.3"``): per-group
    widths from ``allocation`` (``global``, or ``sensitivity`` with
    ``calibration`` and ``evaluation`` input batches), within 2% of the target
    (``plan["budget"]`` says what was reached)."""
    if example_inputs is None:
        raise TypeError("prune() needs example_inputs, a batch the model accepts")
    if target is None:
        if k is None:
            raise ValueError("give k (the percentile rule) or target (a budget, e.g. {'macs': 0.5})")
        return pruning.prune(model, scores, k, example_inputs, ignored_layers, **kwargs)
    if k is not None:
        raise ValueError("k and target are exclusive: k removes a percentile of every group, target meets a budget")
    importance = kwargs.pop("importance", None)
    if kwargs.keys() - {"criterion"}:
        raise TypeError(f"prune(target=...) does not take {sorted(kwargs.keys() - {'criterion'})}")
    if importance is not None and not isinstance(importance, Mapping):
        raise TypeError("with a target, importance is a mapping of group root names to values")
    values = importance if importance is not None else score_values(model, scores, example_inputs, **kwargs)
    hook = getattr(model, "ocnna_ignored_layers", None)
    ignored = list(ignored_layers) if ignored_layers is not None else (list(hook()) if callable(hook) else [])
    result = prune_to_budget(
        model,
        values,
        example_inputs,
        target,
        ignored_layers=ignored,
        allocation=allocation,
        round_to=round_to,
        max_prune=max_prune,
        calibration=calibration,
        evaluation=evaluation,
    )
    return result.pruned, result.plan
