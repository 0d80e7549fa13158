"""The budget options (``--target`` and how it is met), defined once for
``prune`` and ``bench``: their defaults are ``PruneSpec``'s, filled in after
parsing so that an option given to a run that would not use it is refused
rather than ignored."""

from __future__ import annotations

import argparse
import dataclasses
from typing import List, Sequence

from ..budget.spec import ALLOCATIONS, BUDGET_FIELDS, CURVE_SHARE, CURVES, SEARCHES, SENSITIVITY_FIELDS, PruneSpec
from .options import COUNT, NONNEG, PART, SHARE, group

__all__ = [
    "BUDGET_DEFAULTS",
    "add_budget_options",
    "add_latency_target_options",
    "fill_budget_defaults",
    "refuse_unused_budget_options",
    "target",
]


def target(text: str):
    """An argparse type: a budget ``KIND=RATIO`` (``macs=0.5``, ``params=0.3``, ``latency=0.6``)."""
    from ..budget.allocation import parse_target

    try:
        t = parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(t)


def add_latency_target_options(sp: argparse.ArgumentParser) -> None:
    """Where a ``--target latency=R`` is measured."""
    from ..budget.latency import RUNTIMES

    sp = group(sp, "budget (--target)")
    sp.add_argument(
        "--latency-runtime",
        default=None,
        choices=list(RUNTIMES),
        help="the runtime a latency target is measured in (default onnxruntime: needs the deploy extra)",
    )
    sp.add_argument(
        "--latency-batch",
        type=COUNT,
        default=None,
        help=f"images per call when measuring a latency target (default {_SPEC_DEFAULTS['latency_batch']})",
    )


_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruneSpec)}
# The budget options' defaults (PruneSpec's), filled in after parsing: left unset by the
# parser, an option the user gave can be told from one they did not, so that
# one with no effect on the run is refused instead of ignored in silence.
BUDGET_DEFAULTS = {name: _SPEC_DEFAULTS[name] for name in BUDGET_FIELDS}
# the options that shape only a latency target (``spec.SENSITIVITY_FIELDS``: only a sensitivity allocation)
LATENCY_ONLY = ("latency_runtime", "latency_batch")


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def fill_budget_defaults(args: argparse.Namespace) -> List[str]:
    """Fills in the budget options not given; returns the names of those given."""
    given = []
    for dest, default in BUDGET_DEFAULTS.items():
        if not hasattr(args, dest):
            continue
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        else:
            given.append(dest)
    return given


def refuse_unused_budget_options(args: argparse.Namespace, target_kinds: Sequence[str], sensitivity: bool):
    """One line naming the budget options given that this run would not use:
    any without a ``--target``, the sensitivity allocation's when the run does
    not allocate by ``sensitivity``, the latency measurement's without a
    latency target.  Fills in the defaults."""
    given = fill_budget_defaults(args)
    if not target_kinds:
        unused, why = given, "only a --target budget uses {}; the --k rule removes the same share of every group"
    else:
        unused = [d for d in given if d in LATENCY_ONLY and "latency" not in target_kinds]
        why = "only a latency target uses {}; this --target is counted, not measured"
        if not unused and not sensitivity:
            unused = [d for d in given if d in SENSITIVITY_FIELDS]
            why = "only the sensitivity allocation uses {}; this run does not allocate by sensitivity"
    if unused:
        them = "it" if len(unused) == 1 else "them"
        raise ValueError(f"{', '.join(flag(d) for d in unused)}: {why.format(them)}: drop {them}")


def add_budget_options(sp: argparse.ArgumentParser, *, allocation: bool = True) -> None:
    """How a ``--target`` budget is spread over the groups (``allocation``:
    with the ``--allocation`` choice; a suite names it per method)."""
    sp = group(sp, "budget (--target)")
    if allocation:
        _add_allocation(sp)
    sp.add_argument(
        "--round-to",
        type=COUNT,
        default=None,
        help=f"keep every pruned width a multiple of N (default {_SPEC_DEFAULTS['round_to']})",
    )
    sp.add_argument(
        "--max-prune",
        type=SHARE,
        default=None,
        help=f"the largest share of one group that --target may remove (default {_SPEC_DEFAULTS['max_prune']})",
    )
    if allocation:
        _add_search(sp)
    sp.add_argument(
        "--sensitivity-images",
        type=COUNT,
        default=None,
        help=f"calibration and scoring images each sensitivity candidate is measured on (default {_SPEC_DEFAULTS['sensitivity_images']}; fewer "
        "measure the losses too noisily to allocate well, see docs/budget.md)",
    )


def _add_search(sp: argparse.ArgumentParser) -> None:
    """The options of the sensitivity allocation's search."""
    sp.add_argument(
        "--refine-steps",
        type=NONNEG,
        default=None,
        help="after the sensitivity allocation, this many moves of a local search on the loss of all "
        f"groups masked together (default {_SPEC_DEFAULTS['refine_steps']}; 0: off)",
    )
    sp.add_argument(
        "--cap-search",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sensitivity allocation: also allocate with a group's removed share capped at 50, 62.5 and 75%% "
        "and keep the allocation whose groups, masked together, lose least (default; --no-cap-search: the "
        "uncapped allocation only)",
    )
    sp.add_argument(
        "--search",
        default=None,
        choices=list(SEARCHES),
        help=f"how the sensitivity candidates are measured (default {_SPEC_DEFAULTS['search']}): one-pass "
        "(each BatchNorm normalises the evaluated images by their own statistics, one pass per candidate "
        "from its first masked layer), staged (re-estimated on calibration images first: two passes), "
        "screened (staged, the local search's moves screened on a quarter of the images) or full (every "
        "candidate through the whole network); costs and accuracies in docs/budget.md",
    )
    sp.add_argument(
        "--curve-share",
        type=PART,
        default=None,
        help="one-pass search: the share of the sensitivity images the loss curves are measured on "
        f"(default {CURVE_SHARE}; the caps and moves use them all)",
    )
    sp.add_argument(
        "--curves",
        default=None,
        choices=list(CURVES),
        help=f"where the sensitivity allocation's loss curves come from (default {_SPEC_DEFAULTS['curves']}): "
        "measured (a masked evaluation per group and share) or fisher (predicted for every group and share "
        "from one forward and one backward pass, the caps and moves still measured: an experiment, it "
        "misallocated MobileNet v1; docs/budget.md)",
    )


def _add_allocation(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--allocation",
        default=None,
        choices=list(ALLOCATIONS),
        help="per-group widths for --target: sensitivity (default; each group's loss curve measured after "
        "BatchNorm re-estimation) or global (criterion values normalised per group, ranked across groups)",
    )
