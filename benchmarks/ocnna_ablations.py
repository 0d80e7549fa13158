"""Why does OCNNA's score trail?  Ablations of the paper's ambiguous points
that the criteria suite (`ocnna-fast bench`) does not already cover, on the
pretrained CIFAR ResNets (shipped JPEG CIFAR-10):

A. agreement: per group, the Spearman correlation of OCNNA's coefficient of
   variation with the mean energy and with the L1 weight norm, and how many
   of the filters kept at k=40 two criteria share (random selections share
   60% on average);
B. number of images scored: rank stability of OCNNA's values from 250 and
   1000 images against 4000 images, and accuracy after BN re-estimation at
   k=40 when scored on 4000 instead of 1000 images (identical structure);
C. per-layer vs global percentile: with one threshold over all layers (the
   coefficient of variation is scale-free, so this reading is possible), what
   share of each layer the k=40 threshold would remove.

    python benchmarks/ocnna_ablations.py --arch resnet20 resnet56 --json benchmarks/results/ablations.json
    python benchmarks/ocnna_ablations.py --arch resnet20 --scope full --json benchmarks/results/ablations_full.json

(The tap and n_components readings are criteria of the suite: `ocnna-relu`,
`ocnna-0.95`.  In these ResNets each group is one conv, so the rule for
coupled groups plays no part here.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import spearman

from ocnna_fast import evaluate, prune, recalibrate_batchnorm
from ocnna_fast.data.local import cifar10_jpeg, pretrained_weights
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.recovery.distill import TensorImages
from ocnna_fast.selection.criteria import Context, criterion_values
from ocnna_fast.selection.rules import kept_count


def _kept(v: np.ndarray, k: float) -> set:
    return set(np.argsort(-v, kind="stable")[: kept_count(len(v), k)].tolist())


def _images(split: str, n: int, seed: int) -> TensorImages:
    x, y = cifar10_jpeg(split, limit=n, seed=seed)
    return TensorImages(x, y, CIFAR_MEAN, CIFAR_STD)


SCOPE = "inner"  # as the criteria suite ran (set by --scope)


def _ctx(model, data: TensorImages) -> Context:
    batches = list(data.batches(128))
    return Context(
        model,
        [x for x, _ in batches],
        [y for _, y in batches],
        torch.zeros(1, 3, 32, 32),
        list(model.ocnna_ignored_layers(SCOPE)),
    )


def _acc_bn(model, values, k, bn_set, eval_set) -> float:
    pruned, _ = prune(
        model,
        None,
        k,
        torch.zeros(1, 3, 32, 32),
        ignored_layers=list(model.ocnna_ignored_layers(SCOPE)),
        importance=values,
        rule="count",
    )
    recalibrate_batchnorm(pruned, (x for x, _ in bn_set.batches(128)))
    return evaluate(pruned, eval_set)


def run(arch: str, k: float, eval_images: int) -> dict:
    model = load_weights(build(arch), pretrained_weights(arch)).eval()
    s4000 = _images("train", 4000, 11)
    s1000 = _images("train", 1000, 1)  # the suite's scoring set (the CLI's seed + 1)
    s250 = _images("train", 250, 12)
    vals = {
        "ocnna@4000": criterion_values("ocnna", _ctx(model, s4000)),
        "ocnna@1000": criterion_values("ocnna", _ctx(model, s1000)),
        "ocnna@250": criterion_values("ocnna", _ctx(model, s250)),
        "mean-energy@1000": criterion_values("mean-energy", _ctx(model, s1000)),
        "l1": criterion_values("l1", _ctx(model, s1000)),
    }
    roots = list(vals["l1"])
    out: dict = {"arch": arch, "k": k, "scope": SCOPE, "groups": len(roots)}

    def per_group(f, a, b):
        return float(np.mean([f(vals[a][r], vals[b][r]) for r in roots]))

    overlap = lambda u, v: len(_kept(u, k) & _kept(v, k)) / len(_kept(u, k))  # noqa: E731
    out["A"] = {
        "spearman_cv_vs_mean_energy": per_group(spearman, "ocnna@1000", "mean-energy@1000"),
        "spearman_cv_vs_l1": per_group(spearman, "ocnna@1000", "l1"),
        "spearman_mean_energy_vs_l1": per_group(spearman, "mean-energy@1000", "l1"),
        "kept_overlap_cv_mean_energy": per_group(overlap, "ocnna@1000", "mean-energy@1000"),
        "kept_overlap_cv_l1": per_group(overlap, "ocnna@1000", "l1"),
        "kept_overlap_mean_energy_l1": per_group(overlap, "mean-energy@1000", "l1"),
        "kept_overlap_random_expected": float(
            np.mean([kept_count(len(vals["l1"][r]), k) / len(vals["l1"][r]) for r in roots])
        ),
    }
    bn_set, eval_set = _images("train", 1000, 3), _images("test", eval_images, 0)
    out["B"] = {
        "spearman_250_vs_4000": per_group(spearman, "ocnna@250", "ocnna@4000"),
        "spearman_1000_vs_4000": per_group(spearman, "ocnna@1000", "ocnna@4000"),
        "acc_bn_ocnna_1000_images": _acc_bn(model, vals["ocnna@1000"], k, bn_set, eval_set),
        "acc_bn_ocnna_4000_images": _acc_bn(model, vals["ocnna@4000"], k, bn_set, eval_set),
        "eval_images": len(eval_set),
    }
    allv = np.concatenate([vals["ocnna@1000"][r] for r in roots])
    threshold = np.percentile(allv, k)
    removed = {r: float(np.mean(vals["ocnna@1000"][r] < threshold)) for r in roots}
    out["C"] = {
        "global_threshold_removed_share_min": min(removed.values()),
        "global_threshold_removed_share_max": max(removed.values()),
        "groups_losing_over_80_percent": sum(v > 0.8 for v in removed.values()),
        "groups_losing_under_10_percent": sum(v < 0.1 for v in removed.values()),
        "removed_share_by_group": removed,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--k", type=float, default=40.0)
    ap.add_argument("--eval-images", type=int, default=10000)
    ap.add_argument(
        "--scope",
        default="inner",
        choices=["inner", "full"],
        help="which convs are pruned (inner: as the criteria suite ran)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    global SCOPE
    SCOPE = args.scope
    results = []
    for arch in args.arch:
        r = run(arch, args.k, args.eval_images)
        results.append(r)
        show = {part: {k: v for k, v in r[part].items() if not isinstance(v, dict)} for part in "ABC"}
        print(json.dumps({"arch": arch, **show}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
