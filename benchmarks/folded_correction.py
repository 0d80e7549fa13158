"""Time and accuracy of each correction of a folded-BatchNorm model after
surgery, on one pruned copy: the moment correction (``variance``) against
the least-squares refit after it (``refit``), the refit both in one pass of
the calibration images and in a pass up to each layer (as it ran before
the one-pass walk; the same fit, so the same accuracy), with their ratio.

    python benchmarks/folded_correction.py --arch mobilenet_v1_075_imagenet --target macs=0.8 --bn-images 500

The structure is ``global:l1`` at the target (cheap to choose, so the time
measured is the correction's); images as the MobileNet suites draw them
(scoring and calibration from the sample's even half, top-1 on the odd).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from ocnna_fast.cli import build_parser, loading
from ocnna_fast.data.evaluation import evaluate
from ocnna_fast.job.pipeline import JobSettings, PruneJob
from ocnna_fast.recovery.recover import recalibrate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="mobilenet_v1_075_imagenet")
    ap.add_argument("--target", default="macs=0.8")
    ap.add_argument("--bn-images", default="500")
    ap.add_argument("--batch-size", type=int, default=50)
    a = ap.parse_args()
    args = build_parser().parse_args(
        ["bench", "--arch", a.arch, "--dataset", "imagenet-sample", "--target", a.target, "--score-images", "500"]
        + ["--bn-images", a.bn_images, "--batch-size", str(a.batch_size), "--seeds", "0", "--latency-repeats", "0"]
    )
    size = loading.check_data_fits(args)
    model, _ = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    data = loading.job_data(args)
    settings = JobSettings(
        target=a.target, allocation="global", criterion="l1", batch_size=a.batch_size, input_size=size
    )
    job = PruneJob(model, data, settings, progress=False)
    job.rank()
    budget = job.allocate()
    calibration = [x for x, _ in data.calibration.batches(a.batch_size)]
    seconds = {}
    for folded, walk in (("variance", True), ("refit", True), ("refit", False)):
        pruned = copy.deepcopy(budget.pruned)
        start = time.perf_counter()
        info = recalibrate(pruned, model, budget.plan, calibration, folded=folded, one_pass=walk)
        seconds[folded, info.get("refit")] = time.perf_counter() - start
        row = {
            "arch": a.arch,
            "target": a.target,
            "folded": folded,
            "seconds": round(seconds[folded, info.get("refit")], 1),
        }
        row.update(accuracy=evaluate(pruned, data.evaluation), **{k: v for k, v in info.items() if k != "method"})
        print(json.dumps(row), flush=True)
    one, per_layer = seconds.get(("refit", "one pass")), seconds.get(("refit", "a pass per layer"))
    moments = seconds[("variance", None)]  # the refit runs after the moment correction
    if one and per_layer:
        print(
            f"the correction with the refit in one pass: {per_layer / one:.2f}x faster than with a pass per layer; "
            f"the refit alone (less the moment correction's {moments:.0f} s): {per_layer - moments:.0f} s against "
            f"{one - moments:.0f} s, {(per_layer - moments) / max(one - moments, 1e-9):.2f}x (same process, same copy)"
        )


if __name__ == "__main__":
    main()
