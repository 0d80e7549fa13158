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

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.distributed import is_main
from .._util.validate import input_batches_of
from ..selection.groups import channel_groups, conv_groups, feeds_output
from ..selection.rules import group_values
from ..surgery import prune as surgery
from .allocation import (
    CostModel,
    GroupInfo,
    Target,
    Unreachable,
    allocate,
    allowed_widths,
    global_penalty,
    macs_and_params,
    parse_target,
)
from .evaluator import MaskedEvaluator
from .fit import LATENCY_TOLERANCE, TOLERANCE, fit_to_budget, meets, tolerance
from .latency import LatencyRatio
from .sensitivity import SCREEN_SHARE, group_outputs, measure_sensitivity, refine
from .spec import ALLOCATIONS, BUDGET_FIELDS, REFINE_STEPS, PruneSpec

__all__ = [
    "ALLOCATIONS",
    "REFINE_STEPS",
    "BudgetResult",
    "prune",
    "prune_to_budget",
    "budget_groups",
    "count_ratio",
    "tolerance",
    "TOLERANCE",
    "LATENCY_TOLERANCE",
    "input_batches",
    "score_values",
]


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


def budget_groups(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module], values: Mapping[str, Any]):
    """The groups ``prune`` ranks (those the values name, not feeding the
    model's outputs), on a copy of ``model``: (copy, graph, [(group, info)])."""
    work, dg, names, groups = conv_groups(model, example, ignored)
    found = []
    for root, g in groups:
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
    spec: Any,
    *,
    ignored_layers: Sequence[nn.Module] = (),
    calibration: Optional[Sequence[torch.Tensor]] = None,
    evaluation: Optional[Sequence[torch.Tensor]] = None,
    measure: Optional[Callable[[nn.Module], float]] = None,
    seed: int = 0,
    progress: bool = False,
    memo: Optional[Union[str, os.PathLike]] = None,
    **settings: Any,
) -> BudgetResult:
    """A copy of ``model`` pruned as ``spec`` says (a ``PruneSpec`` with a
    target, or a target, ``"macs=0.5"`` or a ``Target``, with ``PruneSpec``
    keywords as ``settings``); within a group the highest ``values`` stay.  The
    sensitivity allocation needs ``calibration`` and ``evaluation`` batches;
    its search is seeded by ``seed``.  ``measure(pruned) -> ratio`` checks the
    budget (default: Torch-Pruning's count); a latency target needs one
    (``LatencyRatio``), approached through MACs.  ``memo``: a file of the
    measured losses, so a stopped run resumes."""
    if isinstance(spec, PruneSpec) and settings:
        raise TypeError(f"prune_to_budget takes a PruneSpec or settings ({sorted(settings)}), not both")
    spec = spec if isinstance(spec, PruneSpec) else PruneSpec(target=spec, **settings)
    if spec.target is None:
        raise ValueError("prune_to_budget needs a target; the k rule is surgery.prune.prune")
    target = parse_target(spec.target)
    _check(target, measure)
    work, dg, names, found = budget_groups(model, example, list(ignored_layers), values)
    if not found:
        raise ValueError("no prunable group: nothing to allocate")
    infos, cost = [info for _, info in found], CostModel(work, example, dg, [g for g, _ in found])
    kind = "macs" if target.kind == "latency" else target.kind  # latency is approached through MACs
    curves = evaluator = None
    max_prune = spec.max_prune
    if spec.allocation == "sensitivity":
        penalty, curves, evaluator, max_prune = _sensitivity(
            model, found, dg, names, cost, Target(kind, target.ratio), (calibration, evaluation, memo),
            cap_search=spec.cap_search, round_to=spec.round_to, max_prune=max_prune, progress=progress,
            staged=spec.search != "full",
        )  # fmt: skip
    else:
        penalty = global_penalty(infos)
    measure = measure or count_ratio(model, example, target.kind)
    build = _builder(model, example, ignored_layers, values, measure)
    fit = _Fit(spec, target, infos, cost, kind, penalty, build)
    built, rounds = fit.meet(max_prune)
    search = None
    if evaluator is not None and spec.refine_steps > 0:
        built, search = fit.refined(built, evaluator, seed, progress)
    pruned, plan, keep, reached = built
    _record(plan, target, reached, spec.allocation, spec.round_to, measure)
    widths = {i.root: (i.width, keep[i.root]) for i in infos}
    sensitivity = _measurement(curves, search, evaluator)
    return BudgetResult(pruned, plan, keep, target, reached, spec.allocation, rounds, sensitivity, widths)


class _Fit:
    """The allocator at a target moved until the count meets the budget,
    and the local search after a sensitivity allocation."""

    def __init__(self, spec: PruneSpec, target: Target, infos, cost: CostModel, kind: str, penalty, build) -> None:
        self.spec, self.target, self.infos, self.cost, self.kind = spec, target, infos, cost, kind
        self.penalty, self.build = penalty, build
        self.max_prune = spec.max_prune

    def greedy(self, aim: float) -> Dict[str, int]:
        per_cost = self.spec.allocation != "global"  # a global ranking compares values alone
        t = Target(self.kind, min(aim, 0.999))
        s = self.spec
        return allocate(
            self.infos, self.cost, t, self.penalty, round_to=s.round_to, max_prune=self.max_prune, per_cost=per_cost
        )

    def meet(self, max_prune: float):
        self.max_prune = max_prune
        try:
            return fit_to_budget(self.greedy, self.build, self.target, self.spec.round_to, max_prune)
        except ValueError:
            if max_prune >= self.spec.max_prune:
                raise
        self.max_prune = self.spec.max_prune  # the cap chosen on the losses is one the counts cannot meet: drop it
        return fit_to_budget(self.greedy, self.build, self.target, self.spec.round_to, self.max_prune)

    def refined(self, built, evaluator, seed: int, progress: bool):
        s = self.spec
        better = _refined(
            evaluator,
            self.infos,
            self.cost,
            self.kind,
            built[2],
            s.round_to,
            self.max_prune,
            s.refine_steps,
            seed,
            progress,
            SCREEN_SHARE if s.search == "screened" else 0.0,
        )
        search = {"steps": s.refine_steps, "loss_before": better[1], "loss_after": better[2], "how": s.search}
        search.update(better[3])
        trial = self.build(better[0])
        if meets(self.target, trial[3]):
            built = trial  # the search kept the cost model's price; the count confirms it
        return built, search


def _builder(model, example, ignored_layers, values, measure):
    """``build(keep) -> (pruned, plan, keep, reached)``: the copy pruned to
    ``keep`` and its ratio by ``measure`` (with a measured budget's figures
    in the plan)."""

    def build(keep: Dict[str, int]):
        pruned, plan = surgery.prune(model, None, None, example, ignored_layers, importance=dict(values), keep=keep)
        reached = measure(pruned)
        figures = getattr(measure, "measurements", None)
        if figures:  # a measured budget: this candidate's own figures go with it
            plan["measured"] = dict(figures[-1])
        return pruned, plan, keep, reached

    return build


def _sensitivity(
    model, found, dg, names, cost, target: Target, images, *, cap_search, round_to, max_prune, progress, staged
):
    """The sensitivity allocation's penalty from loss curves measured on
    ``images`` (calibration, evaluation, memo file), the curves, the
    evaluator, and the cap on a group's removed share that the cap search
    chose (``max_prune`` without it).  ``target`` is counted (MACs or
    parameters: a latency target is approached through MACs)."""
    calibration, evaluation, memo = images
    infos = [info for _, info in found]
    # a target the widths cannot reach is refused before minutes of measuring
    reach = Target(target.kind, min(target.ratio, 0.999))
    allocate(infos, cost, reach, global_penalty(infos), round_to=round_to, max_prune=max_prune, per_cost=False)
    if not evaluation:
        raise ValueError(
            "the sensitivity allocation (the default) measures losses on evaluation images: give them "
            "(and calibration images for its BatchNorm re-estimation), or allocate by 'global', which needs none"
        )
    outputs = [(info, group_outputs(g, dg, names)) for g, info in found]
    evaluator = MaskedEvaluator(model, outputs, calibration, evaluation, memo=memo, cut=staged, write_memo=is_main())
    curves = measure_sensitivity(evaluator, progress=progress)
    if cap_search:
        max_prune, curves.caps = _choose_cap(evaluator, infos, cost, target, curves.penalty, round_to, max_prune)
    return curves.penalty, curves, evaluator, max_prune


def _measurement(curves, search, evaluator) -> Optional[Dict[str, Any]]:
    """What the result keeps of the sensitivity measurement: the curves and
    caps, the search, the candidates measured and those a memo served."""
    if curves is None:
        return None
    return {
        **curves.as_dict(),
        "search": search,
        "evaluations": evaluator.evaluations,
        "reused": evaluator.reused,
        "screened": evaluator.screenings,
        "evaluations_per_process": evaluator.evaluations_per_process,
        "passes": evaluator.passes,
    }


# the shares of a group a capped candidate of ``cap_search`` may remove at most
CAPS = (0.5, 0.625, 0.75)


def _choose_cap(evaluator, infos, cost, target: Target, penalty, round_to: int, max_prune: float):
    """The cap on a group's removed share whose allocation loses least with
    all its groups masked together, and every cap's loss.  The curves add
    single-group losses; many groups cut deep interact, which a lower cap
    spreads out (EagleEye's test, on a few candidates)."""
    losses: Dict[float, float] = {}
    for cap in sorted({c for c in CAPS if c < max_prune} | {max_prune}):
        try:
            keep = allocate(infos, cost, target, penalty, round_to=round_to, max_prune=cap)
        except Unreachable:
            continue  # too low a cap for this budget
        losses[cap] = evaluator.loss({i.root: i.width - keep[i.root] for i in infos})
    return (min(losses, key=losses.get) if losses else max_prune), losses


def _record(plan: Dict[str, Any], target: Target, reached: float, allocation: str, round_to: int, measure) -> None:
    """``plan["budget"]``: what was asked and reached, and for a measured budget how and what it measured."""
    plan["budget"] = {"target": str(target), "reached": reached, "allocation": allocation, "round_to": round_to}
    if "measured" in plan:
        plan["budget"]["measured"] = {**getattr(measure, "describe", dict)(), **plan.pop("measured")}


def _check(target: Target, measure) -> None:
    if target.kind == "latency" and measure is None:
        raise ValueError("a latency target needs measure= (the latency ratio of a pruned model)")


def _refined(evaluator, infos, cost: CostModel, kind: str, keep, round_to, max_prune, steps, seed, progress, screen):
    """The allocation after a local search on the combined masked loss, at
    no more than its price by the cost model."""
    options = {i.root: allowed_widths(i.width, i.blocks, round_to, max_prune) for i in infos}
    widths = {i.root: i.width for i in infos}

    def price(k: Dict[str, int]) -> float:
        return cost.ratio({r: widths[r] - w for r, w in k.items()}, kind)

    budget = price(keep) + 1e-12
    fits = lambda k: price(k) <= budget  # noqa: E731
    record: Dict[str, int] = {}
    keep, before, after = refine(
        evaluator, keep, options, fits, steps, seed=seed, progress=progress, screen=screen, record=record
    )
    return keep, before, after, record


def count_ratio(model: nn.Module, example: torch.Tensor, kind: str) -> Callable[[nn.Module], float]:
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
    **options: Any,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """``ocnna_fast.prune``: a physically smaller copy of ``model``, by the
    paper's percentile rule (``k``; ``surgery.prune.prune`` lists its options)
    or to a budget (``target="macs=0.5"``, ``{"params": 0.3}``,
    ``"latency=0.6"``).  A budget's options are ``PruneSpec``'s, with its
    defaults: ``allocation`` (``sensitivity``, measured on ``calibration``
    and ``evaluation`` inputs: a tensor, a list of tensors or a
    ``DataLoader``; or ``global``), ``round_to``, ``max_prune``,
    ``cap_search``, ``refine_steps``, ``criterion``, or ``importance`` (a
    mapping of group roots to values).  The budget is met within 2% or
    refused (latency: at most 5% over, by ``measure``, default
    ``LatencyRatio(model, side)``); ``plan["budget"]`` says what was reached."""
    if example_inputs is None:
        raise TypeError("prune() needs example_inputs, a batch the model accepts")
    budget = {name: options.pop(name) for name in BUDGET_FIELDS if name in options}
    if target is None:
        if k is None:
            raise ValueError("give k (the percentile rule) or target (a budget, e.g. {'macs': 0.5})")
        if budget:
            raise ValueError(
                f"{', '.join(sorted(budget))}: only a target budget uses them; k removes a share of every group"
            )
        return surgery.prune(model, scores, k, example_inputs, ignored_layers, **options)
    if "sensitivity_images" in budget or "latency_runtime" in budget or "latency_batch" in budget:
        raise TypeError("in Python, give the sensitivity's images as calibration/evaluation and a latency as measure=")
    importance = options.pop("importance", None)
    if options.keys() - {"criterion"}:
        raise TypeError(f"prune(target=...) does not take {sorted(options.keys() - {'criterion'})}")
    spec = PruneSpec(k=k, target=target, **budget, **options)
    if importance is not None and not isinstance(importance, Mapping):
        raise TypeError("with a target, importance is a mapping of group root names to values")
    values = importance if importance is not None else score_values(model, scores, example_inputs, spec.criterion)
    hook = getattr(model, "ocnna_ignored_layers", None)
    ignored = list(ignored_layers) if ignored_layers is not None else (list(hook()) if callable(hook) else [])
    if measure is None and spec.target_kind == "latency":
        measure = LatencyRatio(model, int(example_inputs.shape[-1]))
    calibration = input_batches_of(calibration, "calibration")
    evaluation = input_batches_of(evaluation, "evaluation")
    result = prune_to_budget(
        model, values, example_inputs, spec, ignored_layers=ignored, calibration=calibration,
        evaluation=evaluation, measure=measure, progress=progress,
    )  # fmt: skip
    return result.pruned, result.plan
