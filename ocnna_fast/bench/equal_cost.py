"""The equal-cost suite (``ocnna-fast bench --target``): pruning methods side
by side at the same MACs (or parameter) budget.

A *method* is how the per-group widths are chosen, with the criterion that
ranks the channels within a group:

- ``uniform:CRIT``: the paper's rule, one percentile k in every group (stage
  widths included), k bisected until the model meets the budget;
- ``uniform-inner:CRIT``: the same with the CIFAR ResNets' stage widths
  kept (only each block's inner conv pruned);
- ``global:CRIT`` and ``sensitivity:CRIT``: ``prune --allocation global``
  and ``prune --allocation sensitivity`` with ``--criterion CRIT``, and
  with any flags that follow (``sensitivity:CRIT,no-cap-search,refine-steps=0``):
  a method string means what the same ``prune`` flags mean (``PruneSpec``);
- ``tp-global``: Torch-Pruning's own global pruning through its API
  (``MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` and
  ``global_pruning=True``), its pruning ratio bisected to the budget; the
  widths and channels it chose are rebuilt by our surgery (same structure,
  checked by count) so the rest of the job treats it like any other.

Each cell (method, target, seed) is one ``pipeline.PruneJob``: accuracy
after surgery, after BatchNorm re-estimation and after the distillation
budget, what the budget reached, eager latency.  Rows are appended to
``results.json`` as cells finish, so a stopped suite resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .._util.atomic import write_text_atomic
from ..budget.allocation import Target, parse_target
from ..budget.fit import bisect_to_budget
from ..budget.search import count_ratio
from ..budget.spec import ALLOCATIONS, LEGACY_METHODS, METHOD_KINDS, PruneSpec, parse_method
from ..data.tensorimages import image_side
from ..job.pipeline import JobData, JobSettings, PruneJob
from ..selection.criteria import SEEDED
from ..selection.groups import conv_groups, torch_pruning
from ..surgery.prune import prune
from .engine import Suite
from .results_file import finite_or_none, load_rows, model_config
from .tables import MEASURED, methods_plot, methods_table

__all__ = [
    "METHOD_KINDS",
    "DEFAULT_METHODS",
    "upgrade_row",
    "check_methods",
    "parse_method",
    "parse_targets",
    "run_budget_suite",
    "tp_global_keep",
]

DEFAULT_METHODS = (
    "uniform:ocnna",
    "uniform:ocnna-rms",
    "uniform:l1",
    "uniform-inner:ocnna-rms",
    "uniform-inner:l1",
    "tp-global",
    "global:ocnna-rms",
    "sensitivity:ocnna-rms,no-cap-search,refine-steps=0",
    "sensitivity:ocnna-rms,refine-steps=0",
    "sensitivity:ocnna-rms",  # prune's default allocation
    "sensitivity:l1,no-cap-search,refine-steps=0",
)


def upgrade_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A schema-1 row with its method named as today: ``sensitivity:C`` then
    meant no cap search and no local search, ``sensitivity-caps:C`` the cap
    search alone, ``sensitivity-refine:C`` both (today's ``sensitivity:C``)."""
    kind, _, criterion = str(row.get("method", "")).partition(":")
    if kind not in LEGACY_METHODS or "," in criterion:
        return row
    return dict(row, method=f"sensitivity:{criterion}{LEGACY_METHODS[kind]}")


def parse_targets(items: Sequence[str]) -> List[str]:
    """``["macs=0.5", "0.3", "params=0.4"]``: a bare ratio takes the kind before it."""
    out, kind = [], None
    for item in items:
        text = str(item)
        if "=" not in text:
            if kind is None:
                raise ValueError(f"target {text!r} needs a kind first, e.g. macs={text}")
            text = f"{kind}={text}"
        t = parse_target(text)
        if t.kind == "latency":
            raise ValueError("the equal-cost suite compares at MACs or parameter budgets (macs=R, params=R)")
        kind = t.kind
        out.append(str(t))
    twice = sorted({t for t in out if out.count(t) > 1})
    if twice:
        raise ValueError(f"--target lists {', '.join(twice)} more than once")
    return out


def check_methods(methods: Sequence[str], seeds: Sequence[int]) -> None:
    for m in methods:
        parse_method(m)
    if not methods or not seeds:
        raise ValueError("need at least one method and one seed")
    for option, values in (("--methods", list(methods)), ("--seeds", list(seeds))):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{option} lists {', '.join(twice)} more than once; give each value once")


def _key(row: Dict[str, Any]) -> tuple:
    return (row["method"], row["target"], int(row["seed"]))


def _row_ok(r: Any) -> bool:
    if not (isinstance(r, dict) and {"method", "target", "seed", *MEASURED} <= set(r)):
        return False
    try:
        parse_method(r["method"])
        parse_target(r["target"])
    except (ValueError, TypeError):
        return False
    seed_ok = isinstance(r["seed"], int) and not isinstance(r["seed"], bool) and r["seed"] >= 0
    return seed_ok and finite_or_none(r, MEASURED)


def tp_global_keep(
    model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module], target: Target, max_ratio: float = 0.9
) -> Tuple[Dict[str, int], float]:
    """The per-group widths Torch-Pruning's global pruning (group L2
    magnitude, ``global_pruning=True``) chooses at the pruning ratio that
    meets ``target``, and the ratio."""
    tp = torch_pruning()
    ratio = count_ratio(model, example, target.kind)
    name_of = {m: n for n, m in model.named_modules()}
    skip_names = {name_of[m] for m in ignored}

    def build(share: float) -> nn.Module:
        work = copy.deepcopy(model).eval()
        by_name = dict(work.named_modules())
        skip = [by_name[n] for n in skip_names] + [m for m in work.modules() if isinstance(m, nn.Linear)]
        hook = getattr(work, "ocnna_pruners", None)
        pruner = tp.pruner.MetaPruner(
            work,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=True,
            pruning_ratio=share,
            max_pruning_ratio=max_ratio,
            ignored_layers=skip,
            root_module_types=[nn.Conv2d],
            customized_pruners=hook() if callable(hook) else None,
        )
        pruner.step()
        return work

    share, pruned, _ = bisect_to_budget(build, ratio, target, 0.0, max_ratio)
    keep = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    return keep, share


def _group_roots(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module]) -> List[str]:
    return [root for root, _ in conv_groups(model, example, ignored)[3]]


class _Cells(Suite):
    """Methods side by side: every cell prunes to the same cost."""

    def __init__(self, model, data: JobData, settings: JobSettings, ignored_for, repeats: int) -> None:
        super().__init__(model, data, settings, repeats)
        self.ignored_for = ignored_for
        self.structures: Dict[tuple, Dict[str, Any]] = {}

    def cell(self, method: str, target: str, seed: int) -> Dict[str, Any]:
        kind, spec = PruneSpec.from_method(method, target, base=self.settings)
        settings = dataclasses.replace(self.settings, **spec.prune_fields(), seed=seed)
        ignored = self.ignored_for("inner" if kind == "uniform-inner" else "full")
        job = self.job(settings, ignored)
        built = self._built(job, kind, method, seed)
        job.adopt(copy.deepcopy(built["pruned"]), copy.deepcopy(built["plan"]))  # each seed distills its own copy
        job.recalibrate()
        job.distill()
        result = job.result()
        row: Dict[str, Any] = {"method": method, "target": target, "seed": seed, "k": built["k"]}
        row.update(reached=built["reached"], rpr=result.rpr, macs_ratio=result.macs_ratio)
        row.update(acc_surgery=result.accuracy["surgery"], acc_bn=result.accuracy.get("recalibrated"))
        row.update(acc_finetuned=result.accuracy.get("distilled"), allocation_seconds=built["seconds"])
        row.update(self.latency(result.pruned), search_passes=built["passes"])
        if built["widths"] is not None:
            row["widths"] = built["widths"]
        return row

    def _built(self, job: PruneJob, kind: str, method: str, seed: int) -> Dict[str, Any]:
        """The structure a method chooses at a target (built once: the seeds
        of a deterministic method share it and differ in distillation)."""
        s = job.settings
        key = (method, s.target, seed if s.criterion in SEEDED else 0)
        if key in self.structures:
            return self.structures[key]
        start, k, widths, passes = time.perf_counter(), None, None, 0.0
        if kind in ALLOCATIONS:
            job.rank(self.values_of(job)[0])
            budget = job.allocate()
            pruned, plan, reached = budget.pruned, budget.plan, budget.reached
            widths = {r: list(w) for r, w in budget.widths.items()}
            # the width search's forward-pass equivalents (none for global, as for the one-knob rules)
            passes = (budget.sensitivity or {}).get("passes", 0.0)
        else:
            k, pruned, plan, reached = self._fixed_rule(job, kind, parse_target(s.target))
        built = dict(pruned=pruned, plan=plan, k=k, reached=reached, widths=widths, passes=passes)
        built["seconds"] = time.perf_counter() - start
        self.structures = {key: built}  # one kept: cells run target-major, a method's seeds in a row
        return built

    def _fixed_rule(self, job: PruneJob, kind: str, t: Target):
        """uniform k, or Torch-Pruning's global widths, at the budget: (k or ratio, model, plan, reached)."""
        ratio = count_ratio(self.model, job.example, t.kind)
        ignored = job.ignored
        if kind == "tp-global":
            keep, share = tp_global_keep(self.model, job.example, ignored, t)
            roots = _group_roots(self.model, job.example, ignored)
            keep = {r: keep[r] for r in roots}
            importance = torch_pruning().importance.GroupMagnitudeImportance(p=2)
            pruned, plan = prune(self.model, None, None, job.example, ignored, importance=importance, keep=keep)
            return share, pruned, plan, ratio(pruned)
        values = self.values_of(job)[0]

        def build(k: float):
            return prune(self.model, None, k, job.example, ignored, importance=values)

        k, (pruned, plan), reached = bisect_to_budget(build, lambda b: ratio(b[0]), t, 0.0, 99.0)
        return k, pruned, plan, reached


def _suite_config(config: Dict[str, Any], model: nn.Module, settings: JobSettings, latency_repeats: int):
    """What the rows depend on: the caller's data and options, the model and the job settings."""
    config = dict(config, latency_repeats=latency_repeats, **model_config(model, settings.folded, settings.refit))
    config.update({f: getattr(settings, f) for f in ("epochs", "lr", "batch_size", "input_size", "round_to")})
    config.update(max_prune=settings.max_prune, sensitivity_images=settings.sensitivity_images)
    return config


def _pending(rows, methods, targets, seeds, distilled: bool) -> List[Tuple[str, Any, int]]:
    """The cells still to run; a deterministic method runs at the first seed
    only (unless distillation makes the seed matter)."""
    done = {_key(r) for r in rows}
    return [
        (m, t, int(s))
        for t in targets
        for m in methods
        for s in (seeds if (distilled or parse_method(m)[1] in SEEDED) else seeds[:1])
        if (m, t, int(s)) not in done
    ]


def run_budget_suite(
    model: nn.Module,
    data: JobData,
    settings: JobSettings,
    *,
    methods: Sequence[str],
    targets: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    ignored_for: Callable[[str], List[nn.Module]],
    config: Dict[str, Any],
    latency_repeats: int = 0,
    progress: bool = True,
    log=print,
) -> List[Dict[str, Any]]:
    """Runs (or continues) the equal-cost suite into ``out`` (``results.json``,
    ``results.md``, ``accuracy_vs_cost.png``); returns the rows.
    ``ignored_for(scope)``: the layers a scope (``full``/``inner``) keeps
    whole; ``config``: what the caller's data and options were (checked on
    resume, with the settings and weights added here).  Deterministic
    methods run at the first seed only unless distillation makes the seed
    matter."""
    check_methods(methods, seeds)
    targets = parse_targets(targets)
    settings = dataclasses.replace(settings, input_size=settings.input_size or image_side(data.evaluation))
    if settings.epochs > 0 and data.training is None:
        raise ValueError("distillation needs a training set")
    out.mkdir(parents=True, exist_ok=True)
    config = _suite_config(config, model, settings, latency_repeats)
    rows = load_rows(out / "results.json", config, _row_ok, _key, upgrade_row)
    cells = _pending(rows, methods, targets, seeds, settings.epochs > 0)
    suite = _Cells(model, data, settings, ignored_for, latency_repeats)
    log(f"base: {suite.baseline.accuracy:.2f}% on {len(data.evaluation)} images; {len(cells)} cells to run")
    doc = suite.run(cells, suite.cell, ("method", "target"), out, config, rows, progress)
    write_text_atomic(out / "results.md", methods_table(rows, config, doc["base"]))
    if not methods_plot(rows, out, config.get("arch", "")):
        log("plot skipped: matplotlib is not installed (pip install 'ocnna-fast[bench]')")
    return rows
