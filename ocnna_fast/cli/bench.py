"""``ocnna-fast bench``: pruning criteria side by side at identical structure
(``bench.run_suite``), or with ``--target`` pruning methods side by side at
equal cost (``budget_bench.run_budget_suite``); one ``pipeline.PruneJob``
per cell, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._util.atomic import write_text_atomic
from .._util.distributed import is_main
from .._util.placement import describe_device
from ..bench.equal_cost import DEFAULT_METHODS, check_methods, parse_targets, run_budget_suite
from ..bench.equal_structure import check_cells, run_suite
from ..selection.criteria import CRITERIA
from . import budget_options, loading, options
from .outdir import out_dir
from .output import command_line, writer_lock


def register(sub) -> None:
    be = sub.add_parser(
        "bench",
        help="compare pruning criteria at identical structure (results.json/md, plots)",
        description="Compares pruning criteria at identical structure (--k, --criteria) or pruning methods at equal cost (--target, --methods), cell by cell; resumable from --out.",
        epilog="example: ocnna-fast bench --arch resnet20 --target macs=0.5 --methods uniform:l1 sensitivity:ocnna-rms --out runs/bench",
    )
    options.add_model_options(be)
    options.add_data_options(be)
    options.add_run_options(be, precision=True)
    options.add_scope_option(be)
    be.add_argument("--k", type=options.PERCENTILE, nargs="+", default=None, help="percentiles (default 20 40 60)")
    be.add_argument(
        "--criteria",
        nargs="+",
        default=None,
        choices=list(CRITERIA),
        metavar="NAME",
        help=f"criteria to compare (default all: {' '.join(CRITERIA)})",
    )
    be.add_argument(
        "--target",
        nargs="+",
        default=None,
        metavar="KIND=RATIO",
        help="compare pruning methods at these budgets instead (macs=R or params=R; a bare R takes the kind "
        "before it: --target macs=0.5 0.3)",
    )
    be.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="KIND[:CRITERION][,FLAG]",
        help="with --target: how widths are chosen, and the criterion within a group: uniform:C (one k, "
        "bisected to the budget), uniform-inner:C (CIFAR ResNets' stage widths kept), global:C and "
        "sensitivity:C (exactly prune --allocation global/sensitivity --criterion C), each optionally "
        "followed by prune's flags (sensitivity:C,no-cap-search,refine-steps=0; also round-to=N, max-prune=R, "
        f"sensitivity-images=N), tp-global (Torch-Pruning's global pruning); default {' '.join(DEFAULT_METHODS)}",
    )
    budget_options.add_budget_options(be, allocation=False)
    be.add_argument(
        "--seeds",
        type=options.SEED,
        nargs="+",
        default=[0, 1, 2],
        help="seeds: for random, and for fine-tuning (default 0 1 2)",
    )
    options.add_job_options(be, finetune_epochs=0)
    be.add_argument("--out", default="runs/bench", help="output folder (default runs/bench; a suite there resumes)")
    options.add_threads_option(be)
    be.set_defaults(func=run, scope=None)  # None: not given (a --target suite's methods name their scopes)


def run(args: argparse.Namespace) -> int:
    _check_axes(args)  # before anything loads: unknown or repeated cells are refused
    size = loading.check_data_fits(args)
    out = out_dir(args.out, "bench", inputs=[w for w in (args.weights,) if w])  # refused before anything loads
    model, weights = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size, seed=args.seed)
    model.to(args.device)  # every cell's job runs where the suite does
    print(f"device: {describe_device(args.device)}")
    with writer_lock(out):
        # how to rerun (or resume) the suite; BENCHMARKS.md quotes it above the tables
        if is_main():
            write_text_atomic(out / "command.txt", command_line(args) + "\n")
        rows = suite(args, model, size, out)
    plots = "" if (out / "plots-skipped.txt").exists() else " and plots"
    print(f"{len(rows)} cells; wrote {out / 'results.json'}, {out / 'results.md'}{plots} (weights {weights})")
    return 0


def _check_axes(args: argparse.Namespace) -> None:
    methods = args.methods if args.methods is not None else list(DEFAULT_METHODS)
    kinds = [t.split("=")[0] for t in args.target or []]
    budget_options.refuse_unused_budget_options(args, kinds, any(m.startswith("sensitivity") for m in methods))
    if args.target is None:
        if args.methods is not None:
            raise ValueError("--methods compares at a budget: give --target too (e.g. --target macs=0.5)")
        args.k = args.k if args.k is not None else [20.0, 40.0, 60.0]
        args.criteria = args.criteria if args.criteria is not None else list(CRITERIA)
        check_cells(args.criteria, args.k, args.seeds)
        args.scope = args.scope or "full"
        return
    if args.k is not None or args.criteria is not None:
        raise ValueError("--target compares --methods at equal cost; --k and --criteria belong to the suite without it")
    if args.scope is not None:
        raise ValueError(
            "with --target each method names its scope (uniform:C prunes stage widths, uniform-inner:C keeps "
            "them); --scope belongs to the suite without --target"
        )
    args.target = parse_targets(args.target)
    args.methods = args.methods if args.methods is not None else list(DEFAULT_METHODS)
    check_methods(args.methods, args.seeds)


def suite(args: argparse.Namespace, model, size: int, out: Path):
    """The suite of ``args`` on ``model`` into ``out``."""
    data = loading.job_data(args)
    if args.target is not None:
        return _budget_suite(args, model, size, out, data)
    settings = _shared_settings(args, size)
    return run_suite(
        model,
        data,
        settings,
        criteria=args.criteria,
        ks=args.k,
        seeds=args.seeds,
        out=out,
        config={"arch": args.arch, "dataset": args.dataset, "scope": args.scope, "seed": args.seed},
        ignored_layers=loading.ignored_layers(model, args.scope),
        latency_repeats=args.latency_repeats,
        progress=not args.no_progress,
    )


def _shared_settings(args: argparse.Namespace, size: int):
    """The job settings every cell starts from: the flags' PruneSpec (a cell sets its own
    criterion and k, or method and target) and the distillation's."""
    from ..budget.spec import PruneSpec

    shared = PruneSpec.from_flags({**vars(args), "k": None, "target": None, "folded": args.folded_correction})
    return loading.job_settings(args, shared, size)


def _budget_suite(args: argparse.Namespace, model, size: int, out: Path, data):
    inner = [m for m in args.methods if m.startswith("uniform-inner")]
    try:
        if inner:
            loading.ignored_layers(model, "inner")
    except (TypeError, ValueError):
        raise ValueError(f"{inner[0]}: the inner scope exists for the CIFAR ResNets only") from None
    settings = _shared_settings(args, size)
    config = {
        "arch": args.arch,
        "dataset": args.dataset,
        "seed": args.seed,
        "score_images": len(data.scoring),
        "bn_images": len(data.calibration) if data.calibration is not None else 0,
        "train_images": len(data.training) if data.training is not None else 0,
        "eval_images": len(data.evaluation),
    }
    return run_budget_suite(
        model,
        data,
        settings,
        methods=args.methods,
        targets=args.target,
        seeds=args.seeds,
        out=out,
        ignored_for=lambda scope: loading.ignored_layers(model, scope),
        config=config,
        latency_repeats=args.latency_repeats,
        progress=not args.no_progress,
    )
