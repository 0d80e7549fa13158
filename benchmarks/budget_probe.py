"""Equal-MACs probe: uniform k (bisected to the target MACs) against the
budget allocations, after BatchNorm re-estimation, on a pretrained CIFAR
ResNet.  Prints one line per setting and writes JSON.

    python benchmarks/budget_probe.py resnet56 0.5 --out benchmarks/results/budget-probe-r56.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ocnna_fast.budget.allocation import macs_and_params
from ocnna_fast.data.local import load_split, pretrained_weights
from ocnna_fast.data.tensorimages import TensorImages
from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD


def images(split, n, seed):
    x, y = load_split("cifar10-jpeg", split, limit=n, seed=seed)
    return TensorImages(x, y, CIFAR_MEAN, CIFAR_STD)


def uniform_k_for(model, data, criterion, scope, macs, ignored):
    """The k whose uniform pruning lands closest to ``macs`` (bisection)."""
    base = macs_and_params(model, 32)[0]
    lo, hi = 0.0, 99.0
    job = PruneJob(
        model, data, JobSettings(criterion=criterion, k=50.0, batch_size=128), ignored_layers=ignored, progress=False
    )
    values = job.rank()
    for _ in range(14):
        mid = (lo + hi) / 2
        j = PruneJob(
            model, data, JobSettings(criterion=criterion, k=mid, batch_size=128), ignored_layers=ignored, progress=False
        )
        j.rank(values)
        j.pruned, j.plan = __import__("ocnna_fast").pruning.prune(
            model, None, mid, j.example, ignored_layers=ignored, importance=values, rule="count"
        )
        r = macs_and_params(j.pruned, 32)[0] / base
        if r > macs:
            lo = mid
        else:
            hi = mid
    return hi, values


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch")
    p.add_argument("macs", type=float)
    p.add_argument("--criteria", nargs="+", default=["l1", "ocnna-rms"])
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default=None)
    p.add_argument("--refine-steps", type=int, nargs="+", default=[0, 40])
    p.add_argument("--sensitivity-images", type=int, default=256)
    p.add_argument("--allocations", nargs="+", default=["global", "sensitivity"])
    p.add_argument("--uniform", action="store_true", help="also uniform k at the same MACs (both scopes)")
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_weights(build(a.arch), pretrained_weights(a.arch, None)).eval()
    data = JobData(eval=images("test", a.eval_images, 0), score=images("train", 1000, 1), bn=images("train", 1000, 3))
    rows = []
    base = None
    for crit in a.criteria:
        for scope in ("full", "inner") if a.uniform else ():
            ignored = list(model.ocnna_ignored_layers(scope))
            k, values = uniform_k_for(model, data, crit, scope, a.macs, ignored)
            job = PruneJob(model, data, JobSettings(criterion=crit, k=k), ignored_layers=ignored, progress=False)
            job.evaluate_base()
            job.rank(values)
            job.surgery()
            job.recalibrate()
            res = job.result()
            base = res.baseline.accuracy
            rows.append(
                dict(
                    method=f"uniform k={k:.1f} ({scope})",
                    criterion=crit,
                    macs=res.macs_ratio,
                    acc_surgery=res.accuracy["surgery"],
                    acc_bn=res.accuracy["recalibrated"],
                    seconds=0,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
        for alloc, steps in [(x, s) for x in a.allocations for s in (a.refine_steps if x == "sensitivity" else [0])]:
            t = time.perf_counter()
            settings = JobSettings(
                criterion=crit,
                target=f"macs={a.macs}",
                allocation=alloc,
                refine_steps=steps,
                sensitivity_images=a.sensitivity_images,
            )
            job = PruneJob(
                model, data, settings, ignored_layers=list(model.ocnna_ignored_layers("full")), progress=False
            )
            job.evaluate_base()
            job.surgery()
            job.recalibrate()
            res = job.result()
            rows.append(
                dict(
                    method=f"{alloc} allocation" + (f" + {steps} search steps" if steps else ""),
                    criterion=crit,
                    macs=res.macs_ratio,
                    acc_surgery=res.accuracy["surgery"],
                    acc_bn=res.accuracy["recalibrated"],
                    seconds=time.perf_counter() - t,
                    widths={r: w for r, w in job.budget.widths.items()},
                )
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "widths"}), flush=True)
    command = "python benchmarks/budget_probe.py " + " ".join(sys.argv[1:])
    doc = {
        "arch": a.arch,
        "target_macs": a.macs,
        "base_accuracy": base,
        "eval_images": a.eval_images,
        "command": command,
        "rows": rows,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
