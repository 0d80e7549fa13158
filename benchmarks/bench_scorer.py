"""Scorer benchmark (CPU): native core vs batched PyTorch vs the scikit-learn
oracle, and scoring overhead on top of a CIFAR ResNet-56 forward pass.

    python benchmarks/bench_scorer.py            # full table (a few minutes)
    python benchmarks/bench_scorer.py --quick    # smaller, for a smoke run

Every ratio compares runs made side by side in this one process; times are the
best of several repeats because this machine is shared and noisy.  "torch64"
is the batched PyTorch version of the same math in float64 (the precision of
our float64 path), "torch32" the same in float32 (the precision of our path
for float32 activations).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import RESNET50, RESNET56, best_of, torch_energies  # noqa: E402

import ocnna_fast  # noqa: E402
from ocnna_fast import FilterStats  # noqa: E402
from ocnna_fast.models import cifar_resnet  # noqa: E402
from ocnna_fast.scoring import reference  # noqa: E402


def native_time(maps: torch.Tensor, n_components, repeat: int) -> float:
    st = FilterStats(maps.shape[1], n_components)
    return best_of(lambda: st.update(maps), repeat)


def oracle_per_map(maps: torch.Tensor, n_components, count: int) -> float:
    sample = maps.reshape(-1, maps.shape[2], maps.shape[3])[:count].numpy()
    reference.map_energy(sample[0], n_components)  # warm-up: imports, first-call costs
    t = time.perf_counter()
    for m in sample:
        reference.map_energy(m, n_components)
    return (time.perf_counter() - t) / len(sample)


def shape_table(name, shapes, images, n_components, repeat, oracle_maps):
    """Per-image scoring cost summed over a network's map shapes."""
    rows = []
    tot = {"native": 0.0, "torch": 0.0, "torch32": 0.0, "oracle": 0.0}
    gen = torch.Generator().manual_seed(0)
    for size, per_image in shapes:
        # a batch of `images` images' worth of maps of this size, float32 NCHW
        c = min(per_image, 256)
        b = max(1, per_image * images // c)
        maps = torch.randn(b, c, size, size, generator=gen).relu_()
        scale = per_image * images / (b * c)  # back to per-`images` cost
        tn = native_time(maps, n_components, repeat) * scale
        tt = best_of(lambda: torch_energies(maps, n_components), max(2, repeat // 2)) * scale
        t32 = best_of(lambda: torch_energies(maps, n_components, torch.float32), max(2, repeat // 2)) * scale
        to = oracle_per_map(maps, n_components, oracle_maps) * per_image * images
        rows.append((size, per_image, tn, tt, t32, to))
        tot["native"] += tn
        tot["torch"] += tt
        tot["torch32"] += t32
        tot["oracle"] += to
    print(f"\n{name}, n_components={n_components!r}, {images} image(s), float32 activations, NCHW, seconds")
    print(
        f"{'map':>8} {'maps/img':>9} {'native':>9} {'torch64':>9} {'torch32':>9} {'oracle*':>9}"
        f" {'t64/nat':>8} {'t32/nat':>8} {'orc/nat':>8}"
    )
    for size, per, tn, tt, t32, to in rows:
        print(
            f"{size:>4}x{size:<3} {per:>9} {tn:>9.4f} {tt:>9.4f} {t32:>9.4f} {to:>9.2f}"
            f" {tt / tn:>8.1f} {t32 / tn:>8.1f} {to / tn:>8.0f}"
        )
    n = tot["native"]
    print(
        f"{'total':>8} {'':>9} {n:>9.4f} {tot['torch']:>9.4f} {tot['torch32']:>9.4f} {tot['oracle']:>9.2f}"
        f" {tot['torch'] / n:>8.1f} {tot['torch32'] / n:>8.1f} {tot['oracle'] / n:>8.0f}"
    )
    print(f"  * oracle extrapolated from {oracle_maps} maps per size")
    return tot


def forward_overhead(batch: int, batches: int, repeat: int):
    """score() on CIFAR ResNet-56 over `batches` batches vs the bare forward
    passes over the same batches, interleaved pairs, median of the ratios."""
    model = cifar_resnet(56).eval()
    x = torch.randn(batch, 3, 32, 32)
    data = [x] * batches
    with torch.no_grad():
        model(x)

    def fwd():
        with torch.no_grad():
            for b in data:
                model(b)

    res = {}
    for label, nc, overlap in (("None", None, True), ("None, overlap=False", None, False), ("0.95", 0.95, True)):
        ratios, fwds = [], []
        for _ in range(repeat):
            tf = best_of(fwd, 1)
            ts = best_of(lambda: ocnna_fast.score(model, data, n_components=nc, overlap=overlap, progress=False), 1)
            ratios.append(ts / tf)
            fwds.append(tf)
        res[label] = (float(np.median(fwds)), float(np.median(ratios)))
    print(
        f"\nCIFAR ResNet-56, {batches} batches of {batch}: score() time / forward time "
        f"(median of {repeat} interleaved pairs)"
    )
    for label, (tf, r) in res.items():
        print(
            f"  n_components={label:<20}: forward {tf * 1e3:7.1f} ms, score/forward = {r:.3f}  (+{(r - 1) * 100:.1f}%)"
        )
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images")
    args = ap.parse_args()
    info = ocnna_fast.build_info()
    print(
        f"ocnna-fast {info['version']}, torch {torch.__version__}, CPU threads: ocnna {info['cpu_threads']}, "
        f"torch {torch.get_num_threads()}"
    )
    rep = 3 if args.quick else 7
    forward_overhead(128, 4 if not args.quick else 2, 3 if args.quick else 11)
    for nc in (None, 0.95):
        shape_table("ResNet-56 / CIFAR maps", RESNET56, 8, nc, rep, 20 if args.quick else 60)
        shape_table("ResNet-50 / ImageNet maps", RESNET50, 1, nc, max(2, rep // 2), 5 if args.quick else 20)


if __name__ == "__main__":
    main()
