"""Which points of a finished run's loss curves its allocation read: the
least a search measuring the same curves could spend on them and choose the
same widths.

The allocation (the cap search's allocations and the rounds fitting the
count to the target) reads a group's curve only where it weighs removing
its next channels, so a point it never reads could go unmeasured.  Which
points are read depends on the values read, so the reads are found as a
fixed point: start from every group's first point, run the allocation with
the points not yet taken priced out of reach, take every point it read, and
run it again until it reads no new one.  The last run read only points the
report holds, so it chose what the run chose (checked: the same widths as
the allocation on all the curves).

    python benchmarks/curve_reads.py benchmarks/results/search-cost-mnv1-draws/*-one-pass-r40-c1-s0/report.json

Prints, per run, the points read and what measuring only them would have
cost in forward passes (each point priced as the search prices a candidate:
the share of the network's MACs from the group's first masked layer on),
beside what the run spent on all its curves, its other stages, and the total
the search would have run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from common import finished_run

UNREAD = 1e6  # the loss of a point not yet taken: the allocation never chooses to reach it


class _Reads:
    """The allocation's penalty (``SensitivityCurves.penalty``) on the
    points taken so far, the others out of reach, noting every point it
    reads (a share between two points reads both; beyond the last, the last
    two)."""

    def __init__(self, fractions: List[float], losses: Dict[str, List[float]], taken: Dict[str, Set[int]]):
        from ocnna_fast.budget.sensitivity import SensitivityCurves

        known = {r: [v if i in taken[r] else UNREAD for i, v in enumerate(vs)] for r, vs in losses.items()}
        self.curves = SensitivityCurves(fractions, known, 0.0)
        self.read: Set[Tuple[str, int]] = set()

    def penalty(self, g, kept: int) -> float:
        xs = self.curves.fractions
        at = min(int(np.searchsorted(xs, 1.0 - kept / g.width)), len(xs) - 1)  # xs[at - 1] < share <= xs[at]
        self.read.update((g.root, p - 1) for p in (at - 1, at) if p >= 1)  # xs[p] is the losses' point p - 1
        return self.curves.penalty(g, kept)


def _allocator(run, report: dict):
    """``allocation(penalty) -> kept widths``: the run's allocation stages on
    ``penalty``, the cap search's allocations (the cap its recorded losses
    chose), then the rounds fitting the count to the target (``budget.fit``).
    What does not depend on the penalty (the cost model, the base's count)
    is built once."""
    from ocnna_fast.budget.allocation import CostModel, Target, allocate, parse_target
    from ocnna_fast.budget.fit import fit_to_budget
    from ocnna_fast.budget.search import count_ratio
    from ocnna_fast.cli.prune import spec_of
    from ocnna_fast.surgery.prune import prune

    a, s = spec_of(run.args), report["sensitivity"]  # the run's settings, defaults filled in
    infos = [info for _, info in run.found]
    cost = CostModel(run.dg.model, run.job.example, run.dg, [g for g, _ in run.found])
    target = parse_target(report["target"])
    aimed = Target("macs" if target.kind == "latency" else target.kind, target.ratio)
    caps = {float(c): loss for c, loss in (s.get("caps") or {}).items()}
    max_prune = min(caps, key=caps.get) if caps else a.max_prune
    measure = count_ratio(run.model, run.job.example, target.kind)

    def build(keep):
        pruned, plan = prune(
            run.model, None, None, run.job.example, run.job.ignored, importance=dict(run.values), keep=keep
        )
        return pruned, plan, keep, measure(pruned)

    def allocation(penalty) -> Dict[str, int]:
        for cap in caps:  # each capped allocation reads the curves
            allocate(infos, cost, aimed, penalty, round_to=a.round_to, max_prune=cap)

        def greedy(aim):
            t = Target(aimed.kind, min(aim, 0.999))
            return allocate(infos, cost, t, penalty, round_to=a.round_to, max_prune=max_prune)

        (_, _, keep, _), _ = fit_to_budget(greedy, build, target, a.round_to, max_prune)
        return keep

    return allocation


def reads(report: dict, batch_size: int) -> dict:
    """The points of ``report``'s curves its allocation read, found as a
    fixed point, and what they and all the run's points cost."""
    from ocnna_fast.budget.segments import Segments
    from ocnna_fast.budget.sensitivity import group_outputs

    run = finished_run(report, batch_size)
    s = report["sensitivity"]
    fractions = s["fractions"][1:]
    losses = {root: list(v[1:]) for root, v in s["losses"].items()}
    allocation = _allocator(run, report)
    taken: Dict[str, Set[int]] = {root: {0} for root in losses}
    rounds = 0
    while True:
        rounds += 1
        pen = _Reads(fractions, losses, taken)
        keep = allocation(pen.penalty)
        new = [(r, i) for r, i in pen.read if i not in taken[r]]
        if not new:
            break
        for r, i in new:
            taken[r].add(i)
    everything = _Reads(fractions, losses, {r: set(range(len(fractions))) for r in losses})
    if allocation(everything.penalty) != keep:
        raise AssertionError("the points read chose other widths than all the curves: the fixed point is wrong")
    outputs = {info.root: [n for n, _ in group_outputs(g, run.dg, run.names)] for g, info in run.found}
    segments = Segments.build(run.model, [n for names in outputs.values() for n in names], run.job.example)
    price = {r: segments.share(segments.entry(outputs[r])) if segments else 1.0 for r in losses}
    measured = {r: _measured(v) for r, v in losses.items()}
    # the two rules together: the largest share first, then the points read, top down to a zero
    top_first = {r: _measured(v, {len(v) - 1, *taken[r]}) for r, v in losses.items()}
    return {
        "groups": {r: {"price": price[r], "losses": losses[r], "read": sorted(taken[r]), "measured": measured[r]}
                   for r in losses},
        "rounds": rounds,
        "points": {"all": len(fractions) * len(losses), "measured": sum(map(len, measured.values())),
                   "read": sum(map(len, taken.values()))},
        "shares": {"measured": sum(price[r] * len(measured[r]) for r in losses),
                   "read": sum(price[r] * len(taken[r]) for r in losses),
                   "top_first": sum(price[r] * len(top_first[r]) for r in losses)},
        "stage_passes": s.get("stage_passes"),
        "passes": s.get("passes"),
    }  # fmt: skip


def _measured(losses: List[float], points: Optional[Set[int]] = None) -> List[int]:
    """The ``points`` (all) measured from the largest share down to the
    first zero, as the run measured its curves (below a zero the search
    takes the loss as zero, ``budget.sensitivity``)."""
    out = []
    for i in sorted(range(len(losses)) if points is None else points, reverse=True):
        out.append(i)
        if losses[i] == 0.0:
            break
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="report.json of finished prune runs of the one-pass sensitivity search")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    out = {}
    print(
        "| run | points: all / measured / read | curves' cost, read / largest first then read (of the run's) | "
        "curves: passes run / read | other stages | search: passes run / read |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for path in a.reports:
        r = reads(json.loads(Path(path).read_text()), a.batch_size)
        out[path] = r
        p, stages, shares = r["points"], r["stage_passes"], r["shares"]
        saved = shares["read"] / shares["measured"]  # of what the run spent on its curves
        figures = f"{saved:.0%} / {shares['top_first'] / shares['measured']:.0%}"
        if stages:  # the run's own passes on its curves scaled to the points read, the other stages as run
            curves, other = stages["curves"], r["passes"] - stages["curves"]
            r.update(curve_passes={"run": curves, "read": curves * saved})
            r.update(search_passes={"run": r["passes"], "read": other + curves * saved})
            figures += f" | {curves:.1f} / {curves * saved:.1f} | {other:.1f} | {r['passes']:.1f} / {other + curves * saved:.1f}"
        else:  # reported before its stages were
            figures += f" | - | - | {r['passes']:.1f} / -"
        print(f"| {Path(path).parent.name} | {p['all']} / {p['measured']} / {p['read']} | {figures} |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
