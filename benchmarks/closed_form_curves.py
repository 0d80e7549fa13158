"""Whether the width search's loss curves could be read from statistics
instead of measured: per group and share, the least-squares residual of the
layers reading the group once its lowest-valued share of channels is gone
(one pass streaming their input covariances, ``selection.elimination``),
against the loss the search measured for that candidate (a finished run's
report.json, the run's own images and ranking).

    python benchmarks/closed_form_curves.py benchmarks/results/search-cost-mnv1/mobilenet_v1_075_imagenet-macs0.8-full-r0-s0/report.json

Prints each group's two curves and the rank correlation (Spearman) of the
two over every measured point, and across groups share by share (what the
allocation compares). A screen that ranks like the measurement could stand
in for most of the curves' passes, the measurement kept for what it cannot
separate.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
from common import spearman


def closed_form(report: dict, batch_size: int):
    """Per group root: (its width, the measured losses, the residuals at the same shares), and the seconds."""
    from ocnna_fast.budget.search import budget_groups, input_batches
    from ocnna_fast.cli import build_parser, loading
    from ocnna_fast.job.pipeline import JobSettings, PruneJob
    from ocnna_fast.selection.elimination import collect, consumers, removal_residuals

    args = build_parser().parse_args(shlex.split(report["settings"]["command"])[1:])  # the run's prune command
    size = loading.check_data_fits(args)
    model, _ = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    data = loading.job_data(args)
    settings = JobSettings(criterion=args.criterion, batch_size=batch_size, input_size=size)
    images = getattr(args, "sensitivity_images", None) or settings.sensitivity_images  # as the search drew them
    job = PruneJob(model, data, settings, progress=False)
    values = job.rank()
    t = time.perf_counter()
    work, dg, _, found = budget_groups(model, job.example, job.ignored, values)
    wanted = {info.root: consumers(g, dg, info.width) for g, info in found if info.blocks == 1}
    stats = collect(work, input_batches(data.scoring, batch_size, images), wanted)
    s = report["sensitivity"]
    fractions, measured = s["fractions"], s["losses"]
    out = {}
    for _, info in found:
        if info.blocks != 1 or not stats.get(info.root) or info.root not in measured:
            continue  # grouped channels, or no dense layer reads them: nothing to price
        counts = [int(round(f * info.width)) for f in fractions]
        order = np.argsort(info.values, kind="stable")[: max(counts)]  # the lowest-valued first, as masked
        residual = removal_residuals(stats[info.root], order)
        out[info.root] = (info.width, measured[info.root], [0.0 if c == 0 else float(residual[c - 1]) for c in counts])
    return fractions, out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.json of a finished prune run of the sensitivity allocation")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    report = json.loads(Path(a.report).read_text())
    fractions, groups, seconds = closed_form(report, a.batch_size)
    print("| group | width | " + " | ".join(f"share {f}: measured / residual" for f in fractions[1:]) + " |")
    print("| --- | --- |" + " --- |" * (len(fractions) - 1))
    for root, (width, loss, res) in groups.items():
        cells = " | ".join(f"{m:.4f} / {r:.4f}" for m, r in zip(loss[1:], res[1:]))
        print(f"| {root} | {width} | {cells} |")
    points = [(m, r) for _, loss, res in groups.values() for m, r in zip(loss[1:], res[1:]) if m > 0]
    overall = spearman(*zip(*points)) if points else float("nan")
    by_share = [
        spearman([g[1][i] for g in groups.values()], [g[2][i] for g in groups.values()])
        for i in range(1, len(fractions))
    ]
    print(
        f"\n{len(groups)} groups, {len(points)} measured points; Spearman over all: {overall:.3f}; across groups, "
        + ", ".join(f"share {f}: {c:.3f}" for f, c in zip(fractions[1:], by_share))
        + f"; the statistics and residuals took {seconds:.1f} s (one pass of the search's evaluation images)"
    )
    if a.json:
        doc = {"report": a.report, "fractions": fractions, "groups": groups, "spearman": overall, "by_share": by_share}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
