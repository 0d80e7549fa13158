"""HRank's statistic: the streamed native rank vs HRank's reference procedure.

HRank's reference code scores one layer per forward pass (a hook on that
layer's activation) and calls one ``matrix_rank`` per feature map.  Here that
procedure is reproduced faithfully (one pass per scored layer, one
``torch.linalg.matrix_rank`` per map) and timed side by side, in the same
process, against ``score(tap="post_activation", statistic="rank")``, which
scores every layer in one pass.  Both must give the same average ranks.

    python benchmarks/bench_hrank.py --arch resnet56 --images 128
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from ocnna_fast import score
from ocnna_fast.data import local as data
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.scoring.layers import prunable_convs
from ocnna_fast.scoring.taps import post_activation_taps


def reference_hrank(model, batches, taps):
    """One forward pass per layer; one matrix_rank per map, as HRank does."""
    out = {}
    modules = dict(model.named_modules())
    for name, (hook_name, act) in taps.items():
        total, n = None, 0
        got = {}
        h = modules[hook_name].register_forward_hook(lambda m, i, o: got.__setitem__("o", act(o)))
        with torch.no_grad():
            for x in batches:
                model(x)
                maps = got["o"]
                r = torch.tensor(
                    [
                        [float(torch.linalg.matrix_rank(maps[i, j])) for j in range(maps.shape[1])]
                        for i in range(maps.shape[0])
                    ],
                    dtype=torch.float64,
                )
                total = r.sum(0) if total is None else total + r.sum(0)
                n += maps.shape[0]
        h.remove()
        out[name] = total / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet56", choices=list(data.PRETRAINED))
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    model = load_weights(build(args.arch), data.pretrained_weights(args.arch)).eval()
    x, _ = data.cifar10_jpeg("train", limit=args.images, seed=1)
    batches = [data.normalize(x[i : i + 64], CIFAR_MEAN, CIFAR_STD) for i in range(0, len(x), 64)]
    taps = {n: t for n, t in post_activation_taps(model, prunable_convs(model)).items() if t[1] is not None}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = score(model, batches, tap="post_activation", statistic="rank", layers=list(taps), progress=False)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_hrank(model, batches, taps)
    theirs = time.perf_counter() - t
    worst = max(float((s[n].mean - ref[n]).abs().max()) for n in taps)
    maps = sum(int(s[n].num_channels) for n in taps) * args.images
    print(f"{args.arch}: {len(taps)} post-activation layers, {args.images} images, {maps} maps")
    print(f"streamed native rank, one pass: {ours:.2f} s")
    print(f"HRank reference (a pass per layer, matrix_rank per map): {theirs:.2f} s")
    print(f"speed-up: {theirs / ours:.1f}x; largest difference in average rank: {worst:g}")
    if worst != 0.0:
        raise SystemExit("the average ranks differ")


if __name__ == "__main__":
    main()
