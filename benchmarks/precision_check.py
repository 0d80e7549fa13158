"""Largest relative difference of the CPU core's per-map energies from the
scikit-learn oracle, for float32 and float64 activations.

    python benchmarks/precision_check.py
"""

from __future__ import annotations

import numpy as np
import torch

from ocnna_fast import _native
from ocnna_fast.scoring import reference

SHAPES = [(7, 7), (14, 14), (28, 28), (56, 56), (112, 112), (20, 50), (130, 140)]


def native_energies(a: np.ndarray, n_components) -> np.ndarray:
    return _native.map_energies(torch.from_numpy(a), n_components).ravel()


def main():
    rng = np.random.default_rng(0)
    print(f"{'map':>9} {'n_comp':>6} {'float32':>9} {'float64':>9}   (max relative difference, 40 ReLU'd random maps)")
    for h, w in SHAPES:
        a = np.maximum(rng.standard_normal((2, 20, h, w)), 0)
        for nc in (None, 0.95, 5):
            want = reference.energies(a, nc).ravel()
            e32 = np.max(np.abs(native_energies(a.astype(np.float32), nc) - want) / want)
            e64 = np.max(np.abs(native_energies(a, nc) - want) / want)
            print(f"{h:>4}x{w:<4} {str(nc):>6} {e32:>9.1e} {e64:>9.1e}")


if __name__ == "__main__":
    main()
