"""How much each group can lose, measured: the loss of the model with a
share of one group's lowest-ranked channels masked, after BatchNorm
re-estimation on calibration images (EagleEye's observation: accuracy after
re-estimating BatchNorm ranks pruned structures almost as fine-tuning does),
measured by ``evaluator.MaskedEvaluator``; then a local search on the loss
of all groups masked together, each move screened on a share of the images
before it is measured on all of them.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from .._util.distributed import all_gather_objects, rank_and_world
from .allocation import CostModel, GroupInfo, Target, Unreachable, allocate, allowed_widths
from .evaluator import MaskedEvaluator

__all__ = [
    "group_outputs",
    "SensitivityCurves",
    "measure_sensitivity",
    "refine",
    "refined_allocation",
    "choose_cap",
    "share_out",
    "CAPS",
    "SCREEN_SHARE",
]

FRACTIONS = (0.25, 0.5, 0.75)
# the share of the images a move of the local search is first measured on
SCREEN_SHARE = 0.25


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
    penalty ``allocate`` reads: the loss interpolated at a kept width.
    ``how``: where the losses come from (``spec.CURVES``)."""

    def __init__(
        self, fractions: Sequence[float], losses: Dict[str, List[float]], seconds: float, how: str = "measured"
    ) -> None:
        self.how = how
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
        out = {"curves": self.how, "fractions": self.fractions, "losses": self.losses, "offset": self.offset}
        out["seconds"] = self.seconds
        if self.caps is not None:
            out["caps"] = {str(c): loss for c, loss in self.caps.items()}
        return out


def measure_sensitivity(
    evaluator: MaskedEvaluator, fractions: Sequence[float] = FRACTIONS, progress: bool = False
) -> SensitivityCurves:
    """Each group's loss curve: for each fraction, that share of its
    lowest-valued channels masked alone (``MaskedEvaluator.loss``).  Under
    torchrun the groups are shared out across the processes and the curves
    gathered: every process ends with all of them."""
    t = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(evaluator.groups) * len(fractions), desc="sensitivity", unit="candidate")
    losses: Dict[str, List[float]] = {}
    rank, world = rank_and_world()
    try:
        for root in _by_depth(evaluator)[rank::world]:  # under torchrun each process measures its share
            losses[root] = _curve(evaluator, root, fractions, bar)
    finally:
        if bar is not None:
            bar.close()
    if world > 1:  # every process ends with every curve, as one process would
        share_out(evaluator, [])
        losses = {root: _curve(evaluator, root, fractions, None) for root in evaluator.groups}
    curves = SensitivityCurves(fractions, {r: losses[r] for r in evaluator.groups}, time.perf_counter() - t)
    curves.offset = evaluator.offset
    evaluator.release()
    return curves


def share_out(evaluator: MaskedEvaluator, candidates: Sequence[Dict[str, int]]) -> None:
    """Under torchrun: this process measures its share of ``candidates``
    (every world-th, from its rank on) and every process ends with the
    losses all of them measured in its memo, so asking for any candidate
    then costs nothing.  One process: nothing (each is measured when asked)."""
    rank, world = rank_and_world()
    if world == 1:
        return
    for removed in candidates[rank::world]:
        evaluator.loss(removed)
    shares = all_gather_objects((dict(evaluator.memo.losses), evaluator.evaluations))
    evaluator.memo.merge({key: kl for memo, _ in shares for key, kl in memo.items()})
    evaluator.evaluations_per_process = [n for _, n in shares]


def _curve(evaluator: MaskedEvaluator, root: str, fractions: Sequence[float], bar) -> List[float]:
    """One group's losses at ``fractions``, measured from the largest share
    down: where masking a share loses nothing beyond the offset (a loss of
    0), masking fewer of the same lowest-ranked channels is taken to lose
    nothing too and is not measured.  Such points are within the offset's
    noise anyway, and on a deep network many inner groups are flat at 0:
    on ResNet-56 a sixth to a quarter of the curves' candidates
    (docs/budget-experiments.md)."""
    info = evaluator.groups[root][0]
    per = info.width // info.blocks
    out = [0.0] * len(fractions)
    for i in sorted(range(len(fractions)), key=lambda j: -fractions[j]):
        out[i] = evaluator.loss({root: int(round(fractions[i] * per)) * info.blocks})
        if bar is not None:
            bar.update(1)
        if out[i] == 0.0:
            if bar is not None:
                bar.update(sum(f < fractions[i] for f in fractions))
            break
    return out


def _by_depth(evaluator: MaskedEvaluator) -> List[str]:
    """Group roots in the order their first masked layer runs, so the kept
    activations only ever move deeper (each layer runs once for them all)."""
    roots = list(evaluator.groups)
    if evaluator.segments is None:
        return roots
    return sorted(roots, key=lambda r: evaluator.segments.entry(evaluator.masks_of({r: evaluator.groups[r][0].blocks})))


def refine(
    evaluator: MaskedEvaluator,
    keep: Dict[str, int],
    options: Dict[str, List[int]],
    fits: Callable[[Dict[str, int]], bool],
    steps: int,
    seed: int = 0,
    progress: bool = False,
    screen: float = 0.0,
    record: Optional[Dict[str, int]] = None,
) -> Tuple[Dict[str, int], float, float]:
    """A local search on the combined loss (the curves add single-group
    losses; masking many groups at once interacts): ``steps`` times, widen
    one group by one allowed width and narrow another until the budget
    (``fits``) holds again; keep the move if the measured loss drops.
    ``screen`` (a share in (0, 1)): a move is first measured on that share
    of the images and measured on all of them only if it beats the current
    allocation there (most moves lose, and are dropped at that price).
    Returns ``(keep, loss before, loss after)``; ``record`` (a dict) gets
    the counts of moves proposed, screened, measured and kept."""
    counts = record if record is not None else {}
    counts.update(proposed=0, screened=0, measured=0, kept=0)
    rng = np.random.default_rng(seed)

    best = dict(keep)
    removed = _removed(evaluator, best)
    evaluator.anchor(removed)  # a move changes two groups: in one-pass measurement it runs from the first
    start = current = evaluator.loss(removed)
    screening = 0.0 < screen < 1.0
    best_screened = evaluator.screened(removed, screen) if screening else 0.0
    roots = sorted(best)
    bar = _bar(steps) if progress else None
    try:
        if screening:
            best, current = _screened_moves(
                evaluator, (best, current, best_screened), (options, roots, fits), rng, steps, counts, bar, screen
            )
        else:  # one process: one move a round; under torchrun the moves are shared out, with the same decisions
            best, current = _moves(evaluator, (best, current), (options, roots, fits), rng, steps, counts, bar)
    finally:
        evaluator.anchor(None)
        if bar is not None:
            bar.close()
    return best, start, current


def _bar(steps: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="refine allocation", unit="move")


def _moves(evaluator, state, space, rng, steps: int, counts: Dict[str, int], bar):
    """The local search, across processes under torchrun deciding as one
    process would (with one process it is the plain sequential search):
    each round draws moves from the current allocation until it holds
    ``world`` that fit (remembering the generator after each draw; a draw
    with no move is a step too), the processes measure one each,
    and the moves are then taken in the order drawn: the first that lowers
    the loss is kept and the generator goes back to just after it (the moves
    drawn after it came from the allocation it replaced, and are drawn
    again from the new one).  ``(best, loss)``."""
    best, current = state
    options, roots, fits = space
    world = rank_and_world()[1]
    done = 0
    while done < steps:
        drawn, valid = [], 0
        while valid < world and done + len(drawn) < steps:  # a round holds one move per process to measure
            trial = _move(best, options, roots, fits, rng)
            drawn.append((trial, copy.deepcopy(rng.bit_generator.state)))
            valid += trial is not None
        removed = [None if t is None else _removed(evaluator, t) for t, _ in drawn]
        share_out(evaluator, [r for r in removed if r is not None])
        taken = len(drawn)
        for i, ((trial, after), cut) in enumerate(zip(drawn, removed)):
            counts["proposed"] += trial is not None
            if trial is None:
                continue
            counts["measured"] += 1
            loss = evaluator.loss(cut)
            if loss < current:
                counts["kept"] += 1
                best, current = trial, loss
                evaluator.anchor(cut)
                rng.bit_generator.state = after
                taken = i + 1
                break
        done += taken
        if bar is not None:
            bar.update(taken)
    return best, current


def _screened_moves(evaluator, state, space, rng, steps: int, counts: Dict[str, int], bar, screen: float):
    """The local search with each move screened on ``screen`` of the images
    first (one process: the screen's decisions are not shared out)."""
    best, current, best_screened = state
    options, roots, fits = space
    for _ in range(steps):
        trial = _move(best, options, roots, fits, rng)
        counts["proposed"] += trial is not None
        if trial is not None:
            removed = _removed(evaluator, trial)
            screened = evaluator.screened(removed, screen)
            counts["screened"] += 1
            if screened < best_screened:
                loss = evaluator.loss(removed)
                counts["measured"] += 1
                if loss < current:
                    counts["kept"] += 1
                    best, current, best_screened = trial, loss, screened
                    evaluator.anchor(removed)
        if bar is not None:
            bar.update(1)
    return best, current


def _removed(evaluator: MaskedEvaluator, keep: Dict[str, int]) -> Dict[str, int]:
    """The channels each group of ``keep`` (kept widths) removes."""
    return {r: evaluator.groups[r][0].width - w for r, w in keep.items()}


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


# the shares of a group a capped candidate of ``cap_search`` may remove at most
CAPS = (0.5, 0.625, 0.75)


def choose_cap(evaluator, infos, cost, target: Target, penalty, round_to: int, max_prune: float):
    """The cap on a group's removed share whose allocation loses least with
    all its groups masked together, and every cap's loss.  The curves add
    single-group losses; many groups cut deep interact, which a lower cap
    spreads out (EagleEye's test, on a few candidates)."""
    candidates: Dict[float, Dict[str, int]] = {}
    for cap in sorted({c for c in CAPS if c < max_prune} | {max_prune}):
        try:
            keep = allocate(infos, cost, target, penalty, round_to=round_to, max_prune=cap)
        except Unreachable:
            continue  # too low a cap for this budget
        candidates[cap] = {i.root: i.width - keep[i.root] for i in infos}
    share_out(evaluator, list(candidates.values()))  # under torchrun each process measures its share
    losses = {cap: evaluator.loss(removed) for cap, removed in candidates.items()}
    return (min(losses, key=losses.get) if losses else max_prune), losses


def refined_allocation(
    evaluator, infos, cost: CostModel, kind: str, keep, round_to, max_prune, steps, seed, progress, screen
):
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
