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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.distributed import is_main
from ..selection.groups import channel_groups, conv_groups, feeds_output
from ..surgery import prune as surgery
from .allocation import (
    CostModel,
    GroupInfo,
    Target,
    allocate,
    global_penalty,
    macs_and_params,
    parse_target,
)
from .evaluator import MaskedEvaluator
from .fisher import predicted_sensitivity
from .fit import LATENCY_TOLERANCE, TOLERANCE, fit_to_budget, meets, tolerance
from .segments import first_images, mixed
from .sensitivity import SCREEN_SHARE, choose_cap, group_outputs, measure_sensitivity, refined_allocation
from .spec import ALLOCATIONS, REFINE_STEPS, PruneSpec

__all__ = [
    "ALLOCATION_MEMO",
    "CURVE_MEMO",
    "ALLOCATIONS",
    "REFINE_STEPS",
    "STAGES",
    "BudgetResult",
    "prune_to_budget",
    "budget_groups",
    "count_ratio",
    "tolerance",
    "TOLERANCE",
    "LATENCY_TOLERANCE",
    "input_batches",
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


# the measured losses of a search, in its checkpoint folder: a stopped search resumes from them
ALLOCATION_MEMO = "allocation-losses.json"
# those of the curves when they are measured on fewer images (``curve_share``)
CURVE_MEMO = "allocation-curve-losses.json"


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
    started = time.perf_counter()
    work, dg, names, found = budget_groups(model, example, list(ignored_layers), values)
    if not found:
        raise ValueError("no prunable group: nothing to allocate")
    infos, cost = [info for _, info in found], CostModel(work, example, dg, [g for g, _ in found])
    kind = "macs" if target.kind == "latency" else target.kind  # latency is approached through MACs
    curves = None
    evaluators: Tuple[Any, Any] = (None, None)
    max_prune = spec.max_prune
    stages = _Stages(started)
    if spec.allocation == "sensitivity":
        penalty, curves, evaluators, max_prune = _sensitivity(
            model, found, dg, names, cost, Target(kind, target.ratio), (calibration, evaluation, memo),
            cap_search=spec.cap_search, round_to=spec.round_to, max_prune=max_prune, progress=progress,
            search=spec.search, curve_share=spec.curve_share, curve_source=spec.curves, stages=stages,
        )  # fmt: skip
    else:
        penalty = global_penalty(infos)
    measure = measure or count_ratio(model, example, target.kind)
    build = _builder(model, example, ignored_layers, values, measure)
    fit = _Fit(spec, target, infos, cost, kind, penalty, build)
    built, rounds, search = fit.run(max_prune, evaluators[0], seed, progress, stages)
    pruned, plan, keep, reached = built
    _record(plan, target, reached, spec.allocation, spec.round_to, measure)
    widths = {i.root: (i.width, keep[i.root]) for i in infos}
    sensitivity = _measurement(curves, search, evaluators)
    if sensitivity is not None:
        sensitivity.update(stage_seconds=stages.seconds, stage_passes=stages.passes)
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

    def run(self, max_prune: float, evaluator, seed: int, progress: bool, stages: "_Stages"):
        """The widths meeting the budget, then (with an evaluator and moves)
        the local search: ``(built, rounds, search)``; ``stages`` marks the
        end of each."""
        built, rounds = self.meet(max_prune)
        stages.mark("fit")
        search = None
        if evaluator is not None and self.spec.refine_steps > 0:
            built, search = self.refined(built, evaluator, seed, progress)
            stages.mark("moves")
        return built, rounds, search

    def refined(self, built, evaluator, seed: int, progress: bool):
        s = self.spec
        better = refined_allocation(
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
    model,
    found,
    dg,
    names,
    cost,
    target: Target,
    images,
    *,
    cap_search,
    round_to,
    max_prune,
    progress,
    search,
    curve_share=1.0,
    curve_source="measured",
    stages: Optional["_Stages"] = None,
):
    """The sensitivity allocation's penalty from loss curves measured on
    ``images`` (calibration, evaluation, memo file) or predicted on their
    evaluation images (``curve_source``: ``fisher``), the curves, the
    evaluator, and the cap on a group's removed share that the cap search
    chose (``max_prune`` without it).  ``target`` is counted (MACs or
    parameters: a latency target is approached through MACs).  ``stages``
    marks the end of the set-up, the curves and the cap search."""
    stages = _Stages(time.perf_counter()) if stages is None else stages
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
    if search == "one-pass":  # each candidate normalised by its evaluation images' own statistics
        calibration = None
    evaluation = mixed(evaluation)  # before a first share is taken for the curves
    staged = search != "full"
    evaluator = MaskedEvaluator(model, outputs, calibration, evaluation, memo=memo, cut=staged, write_memo=is_main())
    measured = (
        evaluator if curve_share >= 1.0 else _curve_evaluator(model, outputs, evaluation, evaluator, curve_share, memo)
    )
    stages.evaluators = (evaluator, measured)
    stages.mark("setup")
    if curve_source == "fisher":
        curves = predicted_sensitivity(model, outputs, evaluation, evaluator, progress=progress)
    else:
        curves = measure_sensitivity(measured, progress=progress)
    stages.mark("curves")
    if cap_search:
        max_prune, curves.caps = choose_cap(evaluator, infos, cost, target, curves.penalty, round_to, max_prune)
        stages.mark("caps")
    return curves.penalty, curves, (evaluator, measured), max_prune


# the allocation's stages, in order (report.json's ``stage_seconds`` and
# ``stage_passes`` are keyed by them; report.md says each in words)
STAGES = ("setup", "curves", "caps", "fit", "moves")


def _curve_evaluator(model, outputs, evaluation, evaluator: MaskedEvaluator, curve_share: float, memo):
    """The curves' own evaluator: the first ``curve_share`` of the
    ``evaluation`` batches alone, with their own memo (the caps and moves
    use them all, in ``evaluator``)."""
    n = max(2, round(curve_share * sum(int(x.shape[0]) for x in evaluation)))
    first = [b["x"] for b in first_images([{"x": x} for x in evaluation], n, whole=False)]
    memo_of_curves = None if memo is None else Path(memo).with_name(CURVE_MEMO)
    reference = [torch.cat(evaluator.reference)[:n]]  # per image: the first images' rows of the main one's
    return MaskedEvaluator(model, outputs, None, first, memo=memo_of_curves, write_memo=is_main(), reference=reference)


class _Stages:
    """Where the allocation's seconds and forward passes went, stage by
    stage (``stage_seconds``, ``stage_passes`` in the report)."""

    def __init__(self, started: float) -> None:
        self.seconds: Dict[str, float] = {}
        self.passes: Dict[str, float] = {}
        self.evaluators: Tuple[Any, ...] = ()
        self._at, self._counted = started, 0.0

    def mark(self, name: str) -> None:
        """The stage ``name`` (one of ``STAGES``) ends now."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}: one of {', '.join(STAGES)}")
        now, counted = time.perf_counter(), _passes(*self.evaluators) if self.evaluators else 0.0
        self.seconds[name], self.passes[name] = now - self._at, counted - self._counted
        self._at, self._counted = now, counted


def _passes(evaluator, other) -> float:
    """The forward-pass equivalents both evaluators ran, in ``evaluator``'s unit."""
    return evaluator.passes + (other.passes * other.unit / evaluator.unit if other is not evaluator else 0.0)


def _measurement(curves, search, evaluators) -> Optional[Dict[str, Any]]:
    """What the result keeps of the sensitivity measurement: the curves and
    caps, the search, the candidates measured and those a memo served."""
    if curves is None:
        return None
    evaluator, other = evaluators
    out = {
        **curves.as_dict(),
        "search": search,
        "evaluations": evaluator.evaluations,
        "reused": evaluator.reused,
        "resumed": evaluator.memo.resumed,  # losses an earlier run's memo served: not in ``passes``
        "screened": evaluator.screenings,
        "evaluations_per_process": evaluator.evaluations_per_process,
        "passes": evaluator.passes,
        "pass_images": evaluator.unit,  # the images one forward-pass equivalent stands for
    }
    if other is not evaluator:  # the curves' own measurement, counted in the same unit
        out["evaluations"] += other.evaluations
        out["reused"] += other.reused
        out["resumed"] += other.memo.resumed
        out["passes"] = _passes(evaluator, other)
        out["curve_images"] = other.unit
        if other.evaluations_per_process and evaluator.evaluations_per_process:
            pairs = zip(evaluator.evaluations_per_process, other.evaluations_per_process)
            out["evaluations_per_process"] = [a + b for a, b in pairs]
    return out


def _record(plan: Dict[str, Any], target: Target, reached: float, allocation: str, round_to: int, measure) -> None:
    """``plan["budget"]``: what was asked and reached, and for a measured budget how and what it measured."""
    plan["budget"] = {"target": str(target), "reached": reached, "allocation": allocation, "round_to": round_to}
    if "measured" in plan:
        plan["budget"]["measured"] = {**getattr(measure, "describe", dict)(), **plan.pop("measured")}


def _check(target: Target, measure) -> None:
    if target.kind == "latency" and measure is None:
        raise ValueError("a latency target needs measure= (the latency ratio of a pruned model)")


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
