"""The CPU core built for each instruction set, side by side in one process:
per-map energies of ResNet-50-like maps (float32, NCHW) by every CPU module
this build has and this CPU runs (baseline x86-64, AVX2, AVX-512), against
batched PyTorch in float32 on the same maps.

    python benchmarks/bench_isa.py [--n-components 0.95 | 0] [--repeat 5]

Ratios are torch time / native time, measured in this run; times are the best
of the repeats (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import RESNET50, best_of, torch_energies  # noqa: E402

from ocnna_fast import _native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-components", type=float, default=0.95, help="0: all components (None)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    nc = None if args.n_components == 0 else args.n_components if args.n_components < 1 else int(args.n_components)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for size, per_image in RESNET50:
        c = min(per_image, 256)
        b = max(1, per_image // c)
        batches.append((torch.randn(b, c, size, size, generator=gen).relu_(), per_image / (b * c)))
    modules = _native.cpu_modules()
    print(f"threads {torch.get_num_threads()} (torch) / {_native._C.num_threads()} (core); in use: {_native._C.ISA}")
    chosen = _native._C
    torch32 = sum(best_of(lambda: torch_energies(m, nc, torch.float32), args.repeat) * s for m, s in batches)
    try:
        times = {}
        for isa, module in modules.items():
            _native._C = module
            times[isa] = sum(best_of(lambda: _native.map_energies(m, nc), args.repeat) * s for m, s in batches)
    finally:
        _native._C = chosen
    print(f"ResNet-50 maps, one image, n_components={nc!r}: seconds, and torch32 / native")
    print(f"  {'torch32':>10} {torch32:9.4f}")
    for isa, t in times.items():
        print(f"  {isa:>10} {t:9.4f}  {torch32 / t:5.1f}x")


if __name__ == "__main__":
    main()
