"""How much each group can lose, measured: the loss of the model with a
share of one group's lowest-ranked channels masked, after BatchNorm
re-estimation on calibration images (EagleEye's observation: accuracy after
re-estimating BatchNorm ranks pruned structures almost as fine-tuning does).

Masking a channel at every layer that outputs it (each conv and BatchNorm
of the group) is what removing it does to the rest of the network: its
consumers read zeros.  So a candidate costs two passes over a few hundred
images on one copy of the model, and no surgery.  The loss is the KL
divergence from the base model's predictions (no labels needed).
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..recovery.batchnorm import recalibrate_batchnorm
from ..recovery.foldedbn import output_moments, unfold
from .allocation import GroupInfo
from .lossmemo import LossMemo, fingerprint

__all__ = ["group_outputs", "SensitivityCurves", "MaskedEvaluator", "measure_sensitivity", "refine", "mean_kl"]

FRACTIONS = (0.25, 0.5, 0.75)


def group_outputs(group, dg, names: Dict[nn.Module, str]) -> List[Tuple[str, List[int]]]:
    """``(module name, its channel index of each group position)`` for every
    module that outputs the group's channels: convs, BatchNorms, and modules
    with pruning functions of their own (the CIFAR ResNets' option-A
    shortcut, which carries channels past the block's convs)."""
    out = []
    for dep, idxs in group:
        m = dep.target.module
        if m in names and not isinstance(m, nn.Linear) and dg.is_out_channel_pruning_fn(dep.handler):
            out.append((names[m], [int(i) for i in idxs]))
    return out


class SensitivityCurves:
    """Per group root, the loss at each masked fraction (0 at 0), and the
    penalty ``allocate`` reads: the loss interpolated at a kept width."""

    def __init__(self, fractions: Sequence[float], losses: Dict[str, List[float]], seconds: float) -> None:
        self.fractions = [0.0, *fractions]
        self.losses = {root: [0.0, *v] for root, v in losses.items()}
        self.seconds = seconds
        self.offset = 0.0  # the loss of the unmasked model after the same re-estimation
        self.caps: Optional[Dict[float, float]] = None  # budget.cap_search: the loss of each capped allocation

    def penalty(self, g: GroupInfo, kept: int) -> float:
        share = 1.0 - kept / g.width
        xs, ys = self.fractions, self.losses[g.root]
        if share <= xs[-1]:
            return float(np.interp(share, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])  # beyond the last point: the last slope, never decreasing
        return float(ys[-1] + max(slope, 0.0) * (share - xs[-1]))

    def as_dict(self) -> Dict[str, Any]:
        out = {"fractions": self.fractions, "losses": self.losses, "offset": self.offset, "seconds": self.seconds}
        if self.caps is not None:
            out["caps"] = {str(c): loss for c, loss in self.caps.items()}
        return out


class _Masks:
    """Forward hooks that zero given channels of given layers' outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.handles: List[Any] = []

    def set(self, masks: Dict[str, List[int]]) -> None:
        self.clear()
        for name, channels in masks.items():
            idx = torch.as_tensor(channels, dtype=torch.long)
            self.handles.append(self.modules[name].register_forward_hook(_zeroing(idx)))

    def clear(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _zeroing(idx: torch.Tensor) -> Callable:
    def hook(module, inputs, output):
        output = output.clone()
        output[:, idx] = 0
        return output

    return hook


class MaskedEvaluator:
    """The loss of ``model`` with channels of several groups masked at once,
    after BatchNorm re-estimation on ``calibration``: the KL divergence of its
    predictions on ``evaluation`` from the base model's, less what the
    re-estimation alone moves them (re-estimating on other images shifts the
    predictions by itself, as from lossless to JPEG images; that offset is
    every candidate's).

    ``memo``: a JSON file that keeps every measured loss, written after each
    candidate, so a search that was stopped replays what it had measured and
    goes on where it stopped (the search is seeded: it asks for the same
    candidates in the same order).  The file names what the losses depend
    on (the weights, the channel order in every group, the images); a file
    from another model, ranking or image set is not used, and is replaced."""

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[Tuple[GroupInfo, List[Tuple[str, List[int]]]]],
        calibration: Optional[Sequence[torch.Tensor]],
        evaluation: Sequence[torch.Tensor],
        memo: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        self.work = copy.deepcopy(model).eval()
        self.groups = {info.root: (info, outputs, _lowest_first(info)) for info, outputs in groups}
        orders = json.dumps([(r, o, order) for r, (_, o, order) in sorted(self.groups.items())], default=int)
        widths = {root: info.width for root, (info, _, _) in self.groups.items()}
        self.memo = LossMemo(memo, fingerprint(model, orders, calibration, evaluation), widths)
        self.reused = 0
        if calibration is None:  # one pass: each candidate's statistics from the evaluated images themselves
            evaluation = [torch.cat(list(evaluation))]
        else:
            calibration = [x.contiguous(memory_format=torch.channels_last) for x in calibration]
        evaluation = [x.contiguous(memory_format=torch.channels_last) for x in evaluation]
        self.calibration, self.evaluation = calibration, evaluation
        if not _norms(self.work):
            # folded BatchNorm: put it back (the base model's output moments), so a
            # candidate is re-estimated as on an unfolded network; masks by name
            # then land after the norm, as removal would leave zeros there
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            unfold(self.work, output_moments(model, calibration if calibration is not None else evaluation, convs))
        self.norms = _norms(self.work)
        self.work.to(memory_format=torch.channels_last)  # ~15% faster convs on CPU
        with torch.no_grad():
            self.reference = [F.log_softmax(model.eval()(x), 1) for x in evaluation]
        self.masks = _Masks(self.work)
        self.evaluations = 0
        self.offset = 0.0
        self.offset = self.loss({})

    @property
    def has_bn(self) -> bool:
        """Whether candidates are re-estimated (BatchNorm present, or put back on a folded model)."""
        return bool(self.norms)

    def loss(self, removed: Dict[str, int]) -> float:
        """The loss with ``removed[root]`` of each group's lowest-valued channels masked."""
        key = json.dumps(sorted((root, int(n)) for root, n in removed.items() if n > 0))
        kl = self.memo.get(key)
        if kl is not None:
            self.reused += 1
        else:
            kl = self._measure(removed)
            self.memo.put(key, kl)
        return max(0.0, kl - self.offset)

    def _measure(self, removed: Dict[str, int]) -> float:
        """The KL divergence from the base model's predictions, ``removed`` masked."""
        masks: Dict[str, List[int]] = {}
        for root, n in removed.items():
            info, outputs, order = self.groups[root]
            positions = _expand(order[: n // info.blocks], info)
            for name, chans in outputs:
                masks.setdefault(name, []).extend(chans[p] for p in positions)
        self.masks.set(masks)
        try:
            if self.norms and self.calibration is not None:
                recalibrate_batchnorm(self.work, self.calibration)
            elif self.norms:  # normalised by the statistics of the very batch evaluated: BatchNorm in training mode
                for m in self.norms:
                    m.train()
            self.evaluations += 1
            return mean_kl(self.work, self.evaluation, self.reference)
        finally:
            self.masks.clear()
            for m in self.norms:
                m.eval()


def _norms(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def measure_sensitivity(
    evaluator: MaskedEvaluator, fractions: Sequence[float] = FRACTIONS, progress: bool = False
) -> SensitivityCurves:
    """Each group's loss curve: for each fraction, that share of its
    lowest-valued channels masked alone (``MaskedEvaluator.loss``)."""
    t = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(evaluator.groups) * len(fractions), desc="sensitivity", unit="candidate")
    losses: Dict[str, List[float]] = {}
    try:
        for root, (info, _, _) in evaluator.groups.items():
            per = info.width // info.blocks
            losses[root] = []
            for f in fractions:
                losses[root].append(evaluator.loss({root: int(round(f * per)) * info.blocks}))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    curves = SensitivityCurves(fractions, losses, time.perf_counter() - t)
    curves.offset = evaluator.offset
    return curves


def refine(
    evaluator: MaskedEvaluator,
    keep: Dict[str, int],
    options: Dict[str, List[int]],
    fits: Callable[[Dict[str, int]], bool],
    steps: int,
    seed: int = 0,
    progress: bool = False,
) -> Tuple[Dict[str, int], float, float]:
    """A local search on the combined loss (the curves add single-group
    losses; masking many groups at once interacts): ``steps`` times, widen
    one group by one allowed width and narrow another until the budget
    (``fits``) holds again; keep the move if the measured loss drops.
    Returns ``(keep, loss before, loss after)``."""
    rng = np.random.default_rng(seed)
    widths = {root: info.width for root, (info, _, _) in evaluator.groups.items()}
    best = dict(keep)
    start = current = evaluator.loss({r: widths[r] - k for r, k in best.items()})
    roots = sorted(best)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="refine allocation", unit="move")
    try:
        for _ in range(steps):
            trial = _move(best, options, roots, fits, rng)
            if trial is not None:
                loss = evaluator.loss({r: widths[r] - k for r, k in trial.items()})
                if loss < current:
                    best, current = trial, loss
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return best, start, current


def _move(keep, options, roots, fits, rng) -> Optional[Dict[str, int]]:
    """One group one width wider, another narrower until the budget holds; ``None`` if no such move."""
    up, down = rng.choice(len(roots), size=2, replace=False)
    up, down = roots[up], roots[down]
    i = options[up].index(keep[up])
    if i == 0:
        return None
    trial = dict(keep, **{up: options[up][i - 1]})
    j = options[down].index(keep[down])
    while not fits(trial):
        j += 1
        if j >= len(options[down]):
            return None
        trial[down] = options[down][j]
    return trial


def _lowest_first(info: GroupInfo) -> List[int]:
    """Positions (within one block) in the order they are removed: lowest value first, ties by index."""
    v = np.asarray(info.values, dtype=np.float64)
    per = v.reshape(info.blocks, -1).mean(axis=0) if info.blocks > 1 else v
    return np.lexsort((-np.arange(per.size), per)).tolist()


def _expand(positions: Sequence[int], info: GroupInfo) -> List[int]:
    per = info.width // info.blocks
    return [p + b * per for b in range(info.blocks) for p in positions]


def mean_kl(model: nn.Module, evaluation: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for x, ref in zip(evaluation, reference):
            logp = F.log_softmax(model(x), 1)
            total += float(F.kl_div(logp, ref, reduction="sum", log_target=True))
            n += x.shape[0]
    return total / n
