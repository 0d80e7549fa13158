"""Per-group widths chosen to meet a budget: MACs or parameters as a ratio of
the base model's, with the least loss.

A uniform percentile removes the same share of every group, wherever the
network can or cannot afford it.  Here each group gets its own width:

- ``CostModel``: MACs and parameters as a function of every group's kept
  width, from Torch-Pruning's per-layer counts of the base model (a conv's
  MACs scale with its output times its input width, a BatchNorm's with its
  width), so a candidate costs a few hundred multiplications to price.
- ``allocate``: a greedy descent that removes, one step at a time, the
  channels whose penalty per unit of cost saved is lowest, until the budget
  is met.  The penalty is what the allocation method says a group loses:
  ``global`` ranks every channel by its criterion value normalised by its
  group's mean (Torch-Pruning's global ranking); ``sensitivity`` reads each
  group's measured loss curve (``sensitivity.py``).
- Widths are multiples of ``round_to`` (except where the original is
  smaller), at least one channel and at most ``max_prune`` of a group go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._util.placement import model_device
from ..selection.groups import torch_pruning

__all__ = [
    "Target",
    "Unreachable",
    "parse_target",
    "macs_and_params",
    "GroupInfo",
    "CostModel",
    "allowed_widths",
    "allocate",
    "global_penalty",
]

TARGET_KINDS = ("macs", "params", "latency")


@dataclass(frozen=True)
class Target:
    """A budget: the pruned model's ``kind`` (MACs, parameters or latency)
    as a ``ratio`` of the base model's."""

    kind: str
    ratio: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"a target is one of {', '.join(TARGET_KINDS)}, got {self.kind!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise ValueError(f"a target ratio is a number in (0, 1), got {self.ratio!r}")

    def __str__(self) -> str:
        return f"{self.kind}={self.ratio:g}"


def parse_target(spec) -> Target:
    """``"macs=0.5"``, ``{"macs": 0.5}`` or a ``Target``."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ValueError(f"a target names one budget, e.g. {{'macs': 0.5}}; got {dict(spec)!r}")
        ((kind, ratio),) = spec.items()
        return Target(str(kind), ratio)
    if isinstance(spec, str) and spec.count("=") == 1:
        kind, _, ratio = spec.partition("=")
        try:
            value = float(ratio)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"a target is KIND=RATIO with a number in (0, 1), e.g. macs=0.5; got {spec!r}")
        return Target(kind.strip(), value)
    raise ValueError(f"a target is KIND=RATIO (macs, params or latency), e.g. macs=0.5; got {spec!r}")


class Unreachable(ValueError):
    """A budget the allowed widths cannot meet; ``smallest`` is the lowest ratio they reach."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass
class GroupInfo:
    """One prunable group: its root conv's name, its width, the values that
    rank its channels (higher = keep) and, for grouped convs, the blocks its
    channels repeat in."""

    root: str
    width: int
    values: np.ndarray
    blocks: int = 1


class CostModel:
    """MACs and parameters of ``model`` as a function of each group's kept
    width.  Per layer, Torch-Pruning's count of the base model is split into
    a coefficient times the widths it scales with: a conv or linear layer's
    output and input widths, a BatchNorm's width.  Layers no group touches,
    and the element-wise ops Torch-Pruning counts on their own (activations,
    pooling, additions), stay constant: the estimate is exact for the
    weighted layers and the caller checks the whole against a real count."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, dg, groups: Sequence) -> None:
        tp = torch_pruning()
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
        self.base_macs, self.base_params = float(macs), float(params)
        names = {m: n for n, m in model.named_modules()}
        self._out: Dict[nn.Module, List[str]] = {}
        self._in: Dict[nn.Module, List[str]] = {}
        for g in groups:
            root = names[g[0][0].target.module]
            for dep, _ in g:
                m = dep.target.module
                if dg.is_out_channel_pruning_fn(dep.handler):
                    self._out.setdefault(m, []).append(root)
                elif dg.is_in_channel_pruning_fn(dep.handler):
                    self._in.setdefault(m, []).append(root)
        # per layer: MACs and parameters per (output x input) width, and per output width (a bias)
        self.terms: List[Tuple[float, float, float, float, nn.Module]] = []
        fixed_macs, fixed_params = self.base_macs, self.base_params
        for m in set(self._out) | set(self._in):
            dims = self._dims(m, {})
            if dims is None:
                continue
            lm, lp = float(layer_macs.get(m) or 0), float(layer_params.get(m) or 0)
            share = _bilinear_share(m)  # of a conv's or linear layer's count, what is not its bias
            a, b = dims
            self.terms.append(
                (lm * share / (a * b), lp * share / (a * b), lm * (1 - share) / a, lp * (1 - share) / a, m)
            )
            fixed_macs -= lm
            fixed_params -= lp
        self.fixed_macs, self.fixed_params = fixed_macs, fixed_params

    def _dims(self, m: nn.Module, removed: Mapping[str, int]) -> Optional[Tuple[float, float]]:
        """The two widths a layer's cost is proportional to, after ``removed`` channels per group."""
        lost_out = sum(removed.get(r, 0) for r in self._out.get(m, ()))
        lost_in = sum(removed.get(r, 0) for r in self._in.get(m, ()))
        if isinstance(m, nn.Conv2d):
            out = m.out_channels - lost_out
            if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise: one width
                return float(out), 1.0
            return float(out), float(m.in_channels - lost_in) / m.groups
        if isinstance(m, nn.Linear):
            return float(m.out_features - lost_out), float(m.in_features - lost_in)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return float(m.num_features - lost_out), 1.0
        return None

    def cost(self, removed: Mapping[str, int]) -> Tuple[float, float]:
        """``(MACs, parameters)`` after removing ``removed[root]`` channels from each group."""
        macs, params = self.fixed_macs, self.fixed_params
        for bm, bp, lm, lp, m in self.terms:
            a, b = self._dims(m, removed)
            macs += bm * a * b + lm * a
            params += bp * a * b + lp * a
        return macs, params

    def ratio(self, removed: Mapping[str, int], kind: str) -> float:
        macs, params = self.cost(removed)
        return macs / self.base_macs if kind == "macs" else params / self.base_params


def _bilinear_share(m: nn.Module) -> float:
    """The share of a layer's MACs and parameters that scales with output
    times input width; the rest is its bias, one per output."""
    if getattr(m, "bias", None) is None or isinstance(m, nn.modules.batchnorm._BatchNorm):
        return 1.0
    if isinstance(m, nn.Conv2d):
        per = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    elif isinstance(m, nn.Linear):
        per = m.in_features
    else:
        return 1.0
    return per / (per + 1.0)


def macs_and_params(model: nn.Module, input_size: int) -> Tuple[int, int]:
    """Multiply-accumulates of one image and parameters (Torch-Pruning's counter)."""
    tp = torch_pruning()
    example = torch.zeros(1, 3, input_size, input_size, device=model_device(model))
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def allowed_widths(width: int, blocks: int, round_to: int, max_prune: float) -> List[int]:
    """The kept widths a group may take, widest first: multiples of
    ``round_to`` (and of its blocks), never below one per block nor below
    ``(1 - max_prune)`` of the width; the full width always."""
    step = int(np.lcm(max(1, round_to), blocks)) if width >= round_to else blocks
    floor = max(blocks, math.ceil((1 - max_prune) * width / blocks) * blocks)
    widths = [w for w in range(width - width % step, floor - 1, -step) if w >= floor and w > 0]
    return [width] + [w for w in widths if w < width]


def global_penalty(groups: Sequence[GroupInfo]) -> Callable[[GroupInfo, int], float]:
    """Torch-Pruning's global ranking as a penalty: the sum, over the removed
    channels, of their values divided by their group's mean value, so
    channels of every group compete on one scale."""
    sorted_norm = {}
    for g in groups:
        v = np.asarray(g.values, dtype=np.float64)
        per = v.reshape(g.blocks, -1).mean(axis=0) if g.blocks > 1 else v
        mean = float(np.mean(per)) or 1.0
        sorted_norm[g.root] = np.concatenate([[0.0], np.cumsum(np.sort(per / mean))])

    def penalty(g: GroupInfo, kept: int) -> float:
        removed_positions = (g.width - kept) // g.blocks
        return float(sorted_norm[g.root][removed_positions])

    return penalty


def allocate(
    groups: Sequence[GroupInfo],
    cost: CostModel,
    target: Target,
    penalty: Callable[[GroupInfo, int], float],
    *,
    round_to: int = 1,
    max_prune: float = 0.9,
    per_cost: bool = True,
) -> Dict[str, int]:
    """Kept width per group root meeting ``target`` by the cost model, chosen
    greedily: each step lowers the group whose next allowed width adds the
    least penalty per unit of cost saved (``per_cost=False``: the least
    penalty, whatever it saves, as a global ranking does).  A target the
    allowed widths cannot reach is a ``ValueError`` naming the closest
    reachable ratio."""
    if target.kind not in ("macs", "params"):
        raise ValueError(f"allocate() prices MACs and parameters; a {target.kind} target is met by the job")
    options = {g.root: allowed_widths(g.width, g.blocks, round_to, max_prune) for g in groups}
    at = {g.root: 0 for g in groups}  # index into options
    removed = {g.root: 0 for g in groups}
    current = cost.ratio(removed, target.kind)
    while current > target.ratio:
        best, best_score, best_ratio = None, math.inf, current
        for g in groups:
            i = at[g.root]
            if i + 1 >= len(options[g.root]):
                continue
            kept, nxt = options[g.root][i], options[g.root][i + 1]
            trial = dict(removed, **{g.root: g.width - nxt})
            ratio = cost.ratio(trial, target.kind)
            saved = current - ratio
            if saved <= 0:
                continue
            score = (penalty(g, nxt) - penalty(g, kept)) / (saved if per_cost else 1.0)
            if score < best_score:
                best, best_score, best_ratio = g, score, ratio
        if best is None:
            raise Unreachable(
                f"cannot reach {target}: with at most {max_prune:.0%} of each group removed (and widths multiple "
                f"of {round_to}) the smallest reachable {target.kind} ratio is {current:.4f}",
                current,
            )
        at[best.root] += 1
        removed[best.root] = best.width - options[best.root][at[best.root]]
        current = best_ratio
    _refill(groups, cost, target, penalty, options, at, removed)
    return {g.root: g.width - removed[g.root] for g in groups}


def _refill(groups, cost: CostModel, target: Target, penalty, options, at, removed) -> None:
    """Coarse widths (``round_to``) can overshoot the budget downwards: give
    back, one step at a time, the channels that buy the most penalty per
    unit of cost while the budget still holds."""
    while True:
        best, best_gain = None, 0.0
        current = cost.ratio(removed, target.kind)
        for g in groups:
            i = at[g.root]
            if i == 0:
                continue
            wider = options[g.root][i - 1]
            ratio = cost.ratio(dict(removed, **{g.root: g.width - wider}), target.kind)
            if ratio > target.ratio:
                continue
            gain = (penalty(g, options[g.root][i]) - penalty(g, wider)) / max(ratio - current, 1e-12)
            if best is None or gain > best_gain:
                best, best_gain = g, gain
        if best is None:
            return
        at[best.root] -= 1
        removed[best.root] = best.width - options[best.root][at[best.root]]
