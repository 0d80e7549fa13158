"""``ocnna-fast bench``: pruning criteria side by side at identical structure
(``bench.run_suite``, one ``pipeline.PruneJob`` per cell); resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import check_cells, run_suite
from ..criteria import CRITERIA
from ..outdir import out_dir
from . import loading, options
from .output import writer_lock


def register(sub) -> None:
    be = sub.add_parser("bench", help="compare pruning criteria at identical structure (results.json/md, plots)")
    options.add_model_options(be)
    options.add_data_options(be)
    options.add_run_options(be)
    options.add_scope_option(be)
    be.add_argument(
        "--k", type=options.PERCENTILE, nargs="+", default=[20.0, 40.0, 60.0], help="percentiles (default 20 40 60)"
    )
    be.add_argument(
        "--criteria",
        nargs="+",
        default=list(CRITERIA),
        choices=list(CRITERIA),
        metavar="NAME",
        help=f"criteria to compare (default all: {' '.join(CRITERIA)})",
    )
    be.add_argument(
        "--seeds",
        type=options.SEED,
        nargs="+",
        default=[0, 1, 2],
        help="seeds: for random, and for fine-tuning (default 0 1 2)",
    )
    options.add_job_options(be, finetune_epochs=0)
    be.add_argument("--out", default="runs/bench", help="output folder (a suite there resumes)")
    options.add_threads_option(be)
    be.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_cells(args.criteria, args.k, args.seeds)  # before anything loads: repeated cells are refused
    size = loading.check_data_fits(args)
    model, weights = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    out = out_dir(args.out)
    with writer_lock(out):
        rows = suite(args, model, size, out)
    plots = "" if (out / "plots-skipped.txt").exists() else " and plots"
    print(f"{len(rows)} cells; wrote {out / 'results.json'}, {out / 'results.md'}{plots} (weights {weights})")
    return 0


def suite(args: argparse.Namespace, model, size: int, out: Path):
    """The suite of ``args`` on ``model`` into ``out``."""
    data = loading.job_data(args)
    return run_suite(
        model,
        arch=args.arch,
        score_set=data.score,
        bn_set=data.bn,
        train_set=data.train,
        eval_set=data.eval,
        criteria=args.criteria,
        ks=args.k,
        seeds=args.seeds,
        out=out,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        latency_repeats=args.latency_repeats,
        progress=not args.no_progress,
        dataset=args.dataset,
        ignored_layers=loading.ignored_layers(model, args.scope),
        scope=args.scope,
        input_size=size,
        data_seed=args.seed,
    )
