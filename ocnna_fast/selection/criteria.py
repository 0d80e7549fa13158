"""Filter-ranking criteria for side-by-side comparisons at identical structure.

Each criterion turns a trained model and scoring images into one value per
channel of every prunable group root (higher = keep), keyed by the root's
module name: the mapping ``ocnna_fast.prune(..., importance=...)`` takes.
OCNNA-family criteria come from ``score()``'s streamed statistics; the peers
are Torch-Pruning's own importances, called through its API on the same
groups ``prune`` forms.

Names (stable, for scripts): see ``CRITERIA``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..scoring.scorer import score
from ..scoring.scores import Scores
from .elimination import collect, consumers, eliminate
from .groups import dependency_graph, out_channel_convs
from .rules import group_scores

__all__ = ["CRITERIA", "Context", "FamilyCriterion", "criterion_values", "SEEDED"]


@dataclass
class Context:
    """What a criterion may use: the model, scoring batches (normalised
    inputs) with their labels, an example input for tracing, the layers never
    pruned, and a seed (for ``random``)."""

    model: nn.Module
    batches: Iterable[torch.Tensor]  # iterated once per criterion: a list, or a re-iterable view of a data set
    labels: Iterable[torch.Tensor]
    example_inputs: torch.Tensor
    ignored_layers: List[nn.Module]
    seed: int = 0


def _groups(model: nn.Module, ctx: Context):
    """(root name, group, graph) for the groups ``prune`` ranks, on ``model``
    (a copy of ctx.model with the same module names)."""
    names = {m: n for n, m in model.named_modules()}
    by_name = dict(model.named_modules())
    orig = {m: n for n, m in ctx.model.named_modules()}
    ignored = [by_name[orig[m]] for m in ctx.ignored_layers]
    dg = dependency_graph(model, ctx.example_inputs)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        yield names[group[0][0].target.module], group, dg


@dataclass(frozen=True)
class FamilyCriterion:
    """An OCNNA-family criterion (``pruning.FAMILY``): one scoring pass, then
    per group docs/scoring.md §4's coupled-group rule, as ``prune`` ranks scores.  The
    two halves are separate steps, so a caller can keep the scores."""

    criterion: str
    n_components: Any = None
    tap: str = "conv_output"
    statistic: str = "energy"

    def scores(self, ctx: Context, progress: bool = False) -> Scores:
        with warnings.catch_warnings():  # the convs without their own activation are expected
            warnings.filterwarnings("ignore", message="tap='post_activation'")
            return score(
                ctx.model,
                ctx.batches,
                n_components=self.n_components,
                progress=progress,
                tap=self.tap,
                statistic=self.statistic,
            )

    def values(self, ctx: Context, scores: Scores) -> Dict[str, np.ndarray]:
        out = {}
        model = copy.deepcopy(ctx.model).eval()
        names = {m: n for n, m in model.named_modules()}
        for root, group, dg in _groups(model, ctx):
            # the group's convs whose output channels it removes (as prune counts them)
            members = [
                (scores[names[mod]], idxs) for mod, idxs in out_channel_convs(group, dg) if names.get(mod) in scores
            ]
            if members:
                out[root] = group_scores(members, self.criterion)
        return out

    def __call__(self, ctx: Context) -> Dict[str, np.ndarray]:
        return self.values(ctx, self.scores(ctx))


def _tp(make: Callable[[], object], needs_grad: bool = False) -> Callable[[Context], Dict[str, np.ndarray]]:
    def run(ctx: Context) -> Dict[str, np.ndarray]:
        model = copy.deepcopy(ctx.model).eval()
        if needs_grad:  # Taylor: gradients of the loss on the scoring images
            model.zero_grad()
            for x, y in zip(ctx.batches, ctx.labels):
                F.cross_entropy(model(x), y).backward()
        imp = make()
        out = {}
        for root, group, _ in _groups(model, ctx):
            v = imp(group)
            if v is not None:
                out[root] = v.detach().double().cpu().numpy()
        return out

    return run


def _random(ctx: Context) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(ctx.seed)
    model = copy.deepcopy(ctx.model).eval()
    return {root: rng.random(len(group[0][1])) for root, group, _ in _groups(model, ctx)}


def _tp_importance(name: str, **kw):
    def make():
        import torch_pruning as tp

        return getattr(tp.importance, name)(**kw)

    return make


def _reconstruction(ctx: Context) -> Dict[str, np.ndarray]:
    """Greedy least-squares elimination (``elimination``); a group no dense
    layer reads channel by channel is ranked by its L1 norm instead."""
    model = copy.deepcopy(ctx.model).eval()
    groups, wanted = {}, {}
    for root, group, dg in _groups(model, ctx):
        groups[root] = group
        layers = consumers(group, dg, len(group[0][1]))
        if layers:
            wanted[root] = layers
    stats = collect(model, ctx.batches, wanted)
    out = {root: eliminate(s, len(groups[root][0][1])) for root, s in stats.items() if s}
    magnitude = _tp_importance("GroupMagnitudeImportance", p=1)()
    for root in groups.keys() - out.keys():
        out[root] = magnitude(groups[root]).detach().double().cpu().numpy()
    return out


# name -> how its values are made.  "ocnna" is the paper's reading (the
# contract's defaults, docs/scoring.md); "mean-energy" is the mean of the same per-image energies.
CRITERIA: Dict[str, Callable[[Context], Dict[str, np.ndarray]]] = {
    "ocnna": FamilyCriterion("ocnna"),
    "ocnna-0.95": FamilyCriterion("ocnna", 0.95),
    "ocnna-relu": FamilyCriterion("ocnna", tap="post_activation"),
    "mean-energy": FamilyCriterion("mean-energy"),
    "ocnna-rms": FamilyCriterion("ocnna-rms"),
    "l1": _tp(_tp_importance("GroupMagnitudeImportance", p=1)),
    "l2": _tp(_tp_importance("GroupMagnitudeImportance", p=2)),
    "fpgm": _tp(_tp_importance("FPGMImportance")),
    "taylor": _tp(_tp_importance("GroupTaylorImportance"), needs_grad=True),
    "bn-scale": _tp(_tp_importance("BNScaleImportance")),
    "lamp": _tp(_tp_importance("LAMPImportance")),
    "random": _random,
    # channels ranked by what their readers lose under a least-squares refit
    # (ThiNet-style greedy elimination, ``elimination``)
    "reconstruction": _reconstruction,
    # HRank (Lin et al., CVPR 2020): the average rank of each post-activation
    # map, streamed by the native core in the same single pass
    "hrank": FamilyCriterion("mean-energy", tap="post_activation", statistic="rank"),  # .mean = average rank
}

# criteria whose values depend on the seed
SEEDED = ("random",)


def criterion_values(name: str, ctx: Context) -> Dict[str, np.ndarray]:
    """Per-group values of criterion ``name`` (one of ``CRITERIA``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return CRITERIA[name](ctx)
