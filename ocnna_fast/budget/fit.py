"""Meeting a budget with a real count, for every pruner that has one: the
allocator prices widths by a cost model, which a count (or a measured
latency) differs from, so ``fit_to_budget`` moves the allocator's internal
target until the count lands within tolerance, or says which ratios it could
reach; a one-knob rule (uniform k, a global ratio) is bisected on its knob
(``bisect_to_budget``).  ``prune``, ``bench`` and the scripts use these."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from .allocation import Target, Unreachable

__all__ = ["fit_to_budget", "bisect_to_budget", "meets", "tolerance", "TOLERANCE", "LATENCY_TOLERANCE", "BISECTIONS"]

TOLERANCE = 0.02  # the reached ratio is within 2% of the target's
# a latency ratio is a measurement, not a count: repeats of one model spread
# by a few percent on a shared CPU, so its budget is met within 5%
LATENCY_TOLERANCE = 0.05


def tolerance(kind: str) -> float:
    """How far the reached ratio may be from a ``kind`` target's (above or below)."""
    return LATENCY_TOLERANCE if kind == "latency" else TOLERANCE


def meets(target: Target, reached: float) -> bool:
    """Whether a reached ratio meets the target: a count within tolerance of
    it; a measured latency at most its tolerance over it (timings are too
    noisy to promise a band below)."""
    ceiling = target.ratio * (1 + tolerance(target.kind))
    floor = 0.0 if target.kind == "latency" else target.ratio * (1 - tolerance(target.kind))
    return floor <= reached <= ceiling


def fit_to_budget(greedy, build, target: Target, round_to: int, max_prune: float):
    """Allocations at a rescaled internal target until the real count (or
    measurement) lands within tolerance of the target (8 rounds, 12 for a
    measured latency, then up to 8 of bisection between the closest aims
    on either side, since a count need not rise with the aim): the build
    and the rounds.  A target no allocation met is a ``ValueError`` naming
    the closest ratios reached on either side (a measured latency: the
    closest at or below the ceiling is taken, timings being noisy)."""
    # the band the rounds aim for; meets() also takes a faster latency at the end
    band = target.ratio * tolerance(target.kind)
    floor, ceiling = target.ratio - band, target.ratio + band
    aim, best, tried = target.ratio, None, []
    limit = 12 if target.kind == "latency" else 8
    for rounds in range(1, limit + BISECTIONS + 1):
        if rounds > limit:
            aim = _bisected(tried, floor, ceiling)
            if aim is None:
                break
        try:
            keep = greedy(aim)
        except Unreachable as exc:
            smallest = exc.smallest * 1.0001
            if not tried:
                raise
            if tried[-1][0] <= smallest * 1.001:
                break  # the least the widths allow was built and measured already
            aim = smallest  # the next aim asks for more than the widths allow: try the least they do
            keep = greedy(aim)
        built = build(keep)
        reached = built[3]
        if reached <= ceiling and (best is None or reached > best[3]):
            best = built
        if best is not None and best[3] >= floor:
            return best, rounds
        tried.append((aim, reached))
        aim = _next_aim(tried, target)
    if best is not None and meets(target, best[3]):  # a latency measured faster than asked
        return best, rounds
    below = max((r for _, r in tried if r < floor), default=None)
    above = min((r for _, r in tried if r > ceiling), default=None)
    sides = [f"{target.kind}={r:.4f}" for r in (below, above) if r is not None]
    raise ValueError(
        f"cannot meet {target} within {tolerance(target.kind):.0%}: the closest reached {' and '.join(sides)} "
        f"(widths multiple of {round_to}, at most {max_prune:.0%} of a group removed); ask for one of those, or "
        "change --round-to, --max-prune or --allocation"
    )


def bisect_to_budget(
    build: Callable[[float], Any], ratio: Callable[[Any], float], target: Target, lo: float, hi: float
):
    """A one-knob rule met at a budget (a uniform percentile k, a global
    pruning ratio, in ``[lo, hi]``, more pruning higher): ``(knob, built,
    reached)`` for the largest knob whose model stays within tolerance above
    the target, as close as the rule's steps allow (16 bisections; stops
    early inside the band).  ``ValueError`` when even ``hi`` costs more."""
    ceiling = target.ratio * (1 + TOLERANCE)
    best = None
    for _ in range(16):
        mid = (lo + hi) / 2
        built = build(mid)
        reached = ratio(built)
        if reached <= ceiling:
            best, hi = (mid, built, reached), mid
            if meets(target, reached):
                break
        else:
            lo = mid
    if best is None:
        raise ValueError(f"cannot meet {target} with this rule (the most it prunes still costs more)")
    return best


# rounds of bisection on the aim after the secant's rounds missed the target
BISECTIONS = 8


def _bisected(tried: List[Tuple[float, float]], floor: float, ceiling: float) -> Optional[float]:
    """The aim halfway between the highest one that pruned too much and the
    lowest one that pruned too little, if there is room between them."""
    low = max((a for a, r in tried if r < floor), default=None)
    high = min((a for a, r in tried if r > ceiling and (low is None or a > low)), default=None)
    if low is None or high is None or high - low < 1e-4:
        return None
    return (low + high) / 2


def _next_aim(tried: List[Tuple[float, float]], target: Target) -> float:
    """The next internal MACs target.  A count differs from the cost model
    by a near-constant factor (what it leaves out), so the aim is rescaled
    by it.  A latency is neither proportional to MACs (a runtime has fixed
    costs per layer and per call) nor smooth in it (odd widths fit its
    kernels worse, and each figure is a noisy measurement): after two
    measurements the aim follows the secant through the last two, and once
    aims on both sides of the target are known, it bisects between the
    closest two."""
    (aim, reached) = tried[-1]
    nxt = aim * target.ratio / reached
    if target.kind == "latency" and len(tried) >= 2:
        below = [a for a, r in tried if r <= target.ratio]
        above = [a for a, r in tried if r > target.ratio]
        if below and above and max(below) < min(above):
            return (max(below) + min(above)) / 2
        (a0, r0) = tried[-2]
        if a0 != aim and (reached - r0) / (aim - a0) > 0:
            nxt = aim + (target.ratio - reached) * (aim - a0) / (reached - r0)
    return min(max(nxt, 0.01), 0.999)
