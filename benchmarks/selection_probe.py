"""Quick side-by-side of which filters a criterion keeps, at identical structure.

A first look for the benchmark issue (the full suite is `ocnna-fast bench`,
still to come): for a pretrained CIFAR ResNet, prune at one k with OCNNA's
scores and with other per-filter values in their place, re-estimate BatchNorm
statistics, and report test accuracy.  Every criterion's values are
continuous, so the percentile rule removes the same number of channels from
the same groups whichever criterion ranks them; the script checks that the
parameter counts agree.

    python benchmarks/selection_probe.py --arch resnet56 --k 40 --seeds 3
"""

from __future__ import annotations

import argparse
import time

import torch

from ocnna_fast import count_params, evaluate, prune, recalibrate_batchnorm, score
from ocnna_fast.data import local as data
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.recovery.distill import TensorImages
from ocnna_fast.scoring.layers import prunable_convs
from ocnna_fast.scoring.scores import LayerScores


def as_scores(values):
    return {
        n: LayerScores(
            score=v.double(),
            mean=torch.ones_like(v, dtype=torch.float64),
            std=v.double(),
            count=1,
            dead=torch.zeros(v.numel(), dtype=torch.bool),
        )
        for n, v in values.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet56", choices=list(data.PRETRAINED))
    ap.add_argument("--k", type=float, default=40)
    ap.add_argument("--score-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--bn-images", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_weights(build(args.arch), data.pretrained_weights(args.arch)).eval()
    xs, _ = data.cifar10_jpeg("train", limit=args.score_images, seed=1)
    xb, _ = data.cifar10_jpeg("train", limit=args.bn_images, seed=3)
    xe, ye = data.cifar10_jpeg("test", limit=args.eval_images, seed=0)
    evalset = TensorImages(xe, ye, CIFAR_MEAN, CIFAR_STD)
    score_batches = [data.normalize(xs[i : i + 100], CIFAR_MEAN, CIFAR_STD) for i in range(0, len(xs), 100)]
    bn_batches = [data.normalize(xb[i : i + 100], CIFAR_MEAN, CIFAR_STD) for i in range(0, len(xb), 100)]
    convs = prunable_convs(model)
    crit = {}
    t = time.perf_counter()
    s_none = score(model, score_batches, progress=False)
    crit["ocnna (None)"] = {n: s_none[n].score for n in s_none}
    crit["mean-energy"] = {n: s_none[n].mean for n in s_none}
    crit["std-energy"] = {n: s_none[n].std for n in s_none}
    s95 = score(model, score_batches, n_components=0.95, progress=False)
    crit["ocnna (0.95)"] = {n: s95[n].score for n in s95}
    crit["l1"] = {n: m.weight.detach().abs().sum((1, 2, 3)) for n, m in convs.items()}
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        crit[f"random seed {seed}"] = {n: torch.rand(m.out_channels, generator=g) for n, m in convs.items()}
    print(
        f"scoring {time.perf_counter() - t:.1f} s; base accuracy {evaluate(model, evalset):.2f}% "
        f"on {len(evalset)} test images"
    )
    print(f"| criterion ({args.arch}, k={args.k:g}) | RPR | after surgery | after BN re-estimation |")
    print("| --- | --- | --- | --- |")
    params = None
    for name, values in crit.items():
        pruned, _ = prune(model, as_scores(values), args.k, torch.zeros(1, 3, 32, 32))
        n = count_params(pruned)
        if params is not None and n != params:
            raise SystemExit(f"{name}: structure differs ({n} vs {params} parameters)")
        params = n
        surgery = evaluate(pruned, evalset)
        recalibrate_batchnorm(pruned, bn_batches, progress=False)
        print(
            f"| {name} | {n / count_params(model):.4f} | {surgery:.2f} | {evaluate(pruned, evalset):.2f} |", flush=True
        )


if __name__ == "__main__":
    main()
