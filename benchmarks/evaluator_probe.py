"""The sensitivity allocation with its two evaluators side by side: each
candidate re-estimated on calibration images and scored on others (two
passes) or normalised by the statistics of the very images it is scored on
(one pass, ``MaskedEvaluator(calibration=None)``); no cap search, no moves,
every candidate through the whole network.  Prints the
allocation's time and the accuracy after BatchNorm re-estimation on 1,000
training images, on 2,000 JPEG test images.

    python benchmarks/evaluator_probe.py resnet56 two 256
    python benchmarks/evaluator_probe.py resnet56 one 256
"""

from __future__ import annotations

import json
import sys
import time

from ocnna_fast.budget.search import input_batches, prune_to_budget
from ocnna_fast.data.evaluation import evaluate
from ocnna_fast.data.local import load_split, pretrained_weights
from ocnna_fast.data.tensorimages import TensorImages
from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm


def images(split, n, seed):
    x, y = load_split("cifar10-jpeg", split, limit=n, seed=seed)
    return TensorImages(x, y, CIFAR_MEAN, CIFAR_STD)


def main() -> None:
    arch, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = load_weights(build(arch), pretrained_weights(arch, None)).eval()
    test, score, bn = images("test", 2000, 0), images("train", 500, 1), images("train", 1000, 3)
    job = PruneJob(
        model,
        JobData(evaluation=test, scoring=score, calibration=bn),
        JobSettings(criterion="ocnna-rms"),
        progress=False,
    )
    job.score()
    values = job.rank()
    calibration, evaluation = input_batches(bn, 128, n), input_batches(score, 128, n)
    if mode == "one":
        calibration, evaluation = None, calibration
    t = time.perf_counter()
    # the allocation alone, every candidate a whole pass, as when these figures were recorded (the default
    # search has since become one-pass with a cap search and moves: it would ignore the calibration images)
    settings = dict(search="full", cap_search=False, refine_steps=0)
    r = prune_to_budget(
        model, values, job.example, "macs=0.5", calibration=calibration, evaluation=evaluation, **settings
    )
    seconds = time.perf_counter() - t
    recalibrate_batchnorm(r.pruned, [x for x, _ in bn.batches(128)])
    out = dict(arch=arch, mode=mode, images=n, seconds=round(seconds, 1), reached=r.reached)
    out["acc_bn"] = evaluate(r.pruned, test)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
