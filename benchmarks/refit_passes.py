"""The least-squares refit in one pass against a pass up to each layer, on
BatchNorm networks of growing depth: seconds of each on the same pruned
copy in one process, their ratio, and the largest difference between the
two fits' weights (the same fit: it should be float noise).

    python benchmarks/refit_passes.py --archs resnet20 resnet56 --bn-images 1000 --threads 1 --json OUT.json

Each network is pruned by the uniform rule (``--k`` in every group, L1
ranking: cheap, so the time measured is the refit's), its BatchNorm
statistics re-estimated on the calibration images, then refitted both ways.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ocnna_fast.cli import build_parser, loading
from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm
from ocnna_fast.recovery.refit import reconstruct
from ocnna_fast.selection.groups import torch_pruning
from ocnna_fast.surgery.prune import prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--bn-images", default="1000")
    ap.add_argument("--k", type=float, default=40.0)
    ap.add_argument("--threads", type=int, help="torch's threads (1: a run beside others does not oversubscribe)")
    ap.add_argument("--json", help="where the rows go (a list)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for arch in a.archs:
        args = build_parser().parse_args(
            ["prune", "--arch", arch, "--k", str(a.k), "--criterion", "l1", "--bn-images", a.bn_images]
        )
        size = loading.check_data_fits(args)
        model, _ = loading.load_model(arch, args.weights, args.data_dir, args.dataset, size)
        data = loading.job_data(args)
        batches = [x for x, _ in data.calibration.batches(args.batch_size)]
        example = batches[0][:1]
        l1 = torch_pruning().importance.GroupMagnitudeImportance(p=1)
        pruned, plan = prune(model, None, a.k, example, [], importance=l1)
        recalibrate_batchnorm(pruned, batches)
        row = {"arch": arch, "images": sum(int(x.shape[0]) for x in batches)}
        fitted = {}
        for one_pass in (True, False):
            copy_ = copy.deepcopy(pruned)
            start = time.perf_counter()
            info = reconstruct(copy_, model, plan, batches, one_pass=one_pass)
            row[info["refit"]] = round(time.perf_counter() - start, 2)
            row["layers"] = info["reconstructed"] + info["rescaled"]
            fitted[one_pass] = copy_.state_dict()
        row["ratio"] = round(row["a pass per layer"] / row["one pass"], 2)
        row["largest weight difference"] = max(
            float((fitted[True][k].double() - fitted[False][k].double()).abs().max()) for k in fitted[True]
        )
        print(json.dumps(row), flush=True)
        rows.append(dict(row, command=" ".join(["python", "benchmarks/refit_passes.py", *sys.argv[1:]])))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
