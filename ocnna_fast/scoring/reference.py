"""The slow oracle: docs/scoring.md §5, transcribed literally with scikit-learn.

For every image and channel, ``PCA(n_components).fit_transform(map)`` and the
Frobenius norm of the result; then ``numpy.std / numpy.mean`` over images.
It exists only to check the fast paths.  scikit-learn is a test/benchmark
dependency, imported on first use.
"""

from __future__ import annotations

from typing import Dict, Union

import numpy as np

__all__ = ["map_energy", "energies", "scores_from_energies", "score_activations", "map_rank", "ranks"]


def _as_numpy(x) -> np.ndarray:
    """float64 copy of the values.  Upcasting is exact, and it keeps the oracle
    itself accurate: scikit-learn in float32 loses about 1e-3 relative on maps
    with a large common offset, which would hide errors of the fast paths."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float64)


def map_energy(x, n_components: Union[None, int, float] = None) -> float:
    """F for one ``H x W`` map: ``||PCA(n_components).fit_transform(x)||_F``.

    Rows are samples and columns features, as scikit-learn sees a 2-D array.
    A map with zero variance gives 0 (docs/scoring.md §2); an int ``n_components``
    is capped at ``min(H, W)``, as the contract says.
    """
    from sklearn.decomposition import PCA

    x = _as_numpy(x)
    if x.ndim != 2:
        raise ValueError(f"map must be 2-D, got shape {x.shape}")
    if np.all(x == x[0:1, :]):  # every column constant: Xc == 0
        return 0.0
    nc = n_components
    if isinstance(nc, (int, np.integer)) and not isinstance(nc, bool):
        nc = min(int(nc), min(x.shape))
    transformed = PCA(n_components=nc).fit_transform(x)
    return float(np.linalg.norm(transformed, "fro"))


def energies(acts, n_components: Union[None, int, float] = None) -> np.ndarray:
    """``F[n, c]`` for activations ``(N, C, H, W)``, float64."""
    return _per_map(acts, lambda m: map_energy(m, n_components))


def _per_map(acts, fn) -> np.ndarray:
    """``fn`` of every map of activations ``(N, C, H, W)``, as float64 ``[N, C]``."""
    a = _as_numpy(acts)
    if a.ndim != 4:
        raise ValueError(f"activations must be (N, C, H, W), got shape {a.shape}")
    out = np.empty(a.shape[:2], dtype=np.float64)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[n, c] = fn(a[n, c])
    return out


def scores_from_energies(f: np.ndarray) -> Dict[str, np.ndarray]:
    """docs/scoring.md §3: per channel ``std / mean`` over images (ddof 0); dead channels score 0."""
    f = np.asarray(f, dtype=np.float64)
    mean = np.mean(f, axis=0)
    std = np.std(f, axis=0)
    dead = mean == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(dead, 0.0, std / np.where(dead, 1.0, mean))
    return {"score": score, "mean": mean, "std": std, "dead": dead, "count": f.shape[0]}


def score_activations(acts, n_components: Union[None, int, float] = None) -> Dict[str, np.ndarray]:
    """Oracle scores of one layer from its stacked activations ``(N, C, H, W)``."""
    return scores_from_energies(energies(acts, n_components))


def map_rank(x) -> int:
    """HRank's per-map statistic, literally as its reference code computes it:
    ``torch.linalg.matrix_rank`` of the map as a float32 matrix (default
    tolerance: max(H, W) * eps * largest singular value)."""
    import torch

    t = torch.as_tensor(_as_numpy(x), dtype=torch.float32)
    if t.dim() != 2:
        raise ValueError(f"map must be 2-D, got shape {tuple(t.shape)}")
    return int(torch.linalg.matrix_rank(t))


def ranks(acts) -> np.ndarray:
    """``rank[n, c]`` for activations ``(N, C, H, W)``, one ``matrix_rank`` call per map."""
    return _per_map(acts, map_rank)
