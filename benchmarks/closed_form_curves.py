"""Whether the width search's loss curves could be read from statistics
instead of measured, against the loss the search measured for each candidate
(a finished run's report.json, the run's own images and ranking).  Two
screens price removing each group's lowest-valued share of channels:

- ``residual``: the least-squares residual of the layers reading the group
  once those channels are gone (one pass streaming their input covariances,
  ``selection.elimination``);
- ``fisher``: the KL divergence a second-order expansion predicts (one
  forward and a few backward passes: the group Fisher information of the
  channels' gates, cross terms kept).

    python benchmarks/closed_form_curves.py benchmarks/results/search-cost-mnv1/mobilenet_v1_075_imagenet-macs0.8-full-r0-s0/report.json --screen fisher

Prints each group's two curves and the rank correlation (Spearman) of the
two over every measured point, and across groups share by share (what the
allocation compares). A screen that ranks like the measurement could stand
in for most of the curves' passes, the measurement kept for what it cannot
separate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import finished_run, spearman


def residual_curves(report: dict, batch_size: int, fractions):
    """Per group root: its width and the least-squares residual of its
    readers at each share (dense groups read by dense layers only), and the
    seconds."""
    from ocnna_fast.budget.search import input_batches
    from ocnna_fast.selection.elimination import collect, consumers, removal_residuals

    run = finished_run(report, batch_size)
    data, found, dg, images = run.data, run.found, run.dg, run.images
    t = time.perf_counter()
    wanted = {info.root: consumers(g, dg, info.width) for g, info in found if info.blocks == 1}
    stats = collect(dg.model, input_batches(data.scoring, batch_size, images), wanted)
    out = {}
    for _, info in found:
        if info.blocks != 1 or not stats.get(info.root):
            continue  # grouped channels, or no dense layer reads them: nothing to price
        counts = [int(round(f * info.width)) for f in fractions]
        order = np.argsort(info.values, kind="stable")[: max(counts)]  # the lowest-valued first, as masked
        residual = removal_residuals(stats[info.root], order)
        out[info.root] = (info.width, [0.0 if c == 0 else float(residual[c - 1]) for c in counts])
    return out, time.perf_counter() - t


def predicted_curves(report: dict, batch_size: int, fractions, samples: int = 4):
    """Per group root: its width and the KL divergence a second-order
    expansion predicts for masking each share (``budget.fisher``), and the
    seconds."""
    from ocnna_fast.budget.fisher import fisher_curves
    from ocnna_fast.budget.search import input_batches
    from ocnna_fast.budget.sensitivity import group_outputs

    run = finished_run(report, batch_size)
    data, found, dg, names, images = run.data, run.found, run.dg, run.names, run.images
    t = time.perf_counter()
    groups = [(info, group_outputs(g, dg, names)) for g, info in found]
    batches = input_batches(data.scoring, batch_size, images)
    predicted = fisher_curves(dg.model, groups, batches, fractions, samples=samples)
    return {info.root: (info.width, predicted[info.root]) for info, _ in groups}, time.perf_counter() - t


SCREENS = {"residual": residual_curves, "fisher": predicted_curves}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.json of a finished prune run of the sensitivity allocation")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--screen", choices=sorted(SCREENS), default="residual", help="what prices the removals")
    ap.add_argument("--samples", type=int, default=4, help="fisher: labels drawn per image")
    a = ap.parse_args()
    report = json.loads(Path(a.report).read_text())
    s = report["sensitivity"]
    fractions, measured = s["fractions"], s["losses"]
    extra = {"samples": a.samples} if a.screen == "fisher" else {}
    predicted, seconds = SCREENS[a.screen](report, a.batch_size, fractions, **extra)
    groups = {root: (width, measured[root], p) for root, (width, p) in predicted.items() if root in measured}
    print("| group | width | " + " | ".join(f"share {f}: measured / {a.screen}" for f in fractions[1:]) + " |")
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
        + f"; the {a.screen} screen took {seconds:.1f} s"
    )
    if a.json:
        doc = {"report": a.report, "screen": a.screen, **extra, "fractions": fractions, "groups": groups}
        doc.update(spearman=overall, by_share=by_share, seconds=seconds)
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
