"""ocnna-fast: exact, streaming OCNNA filter scoring for PyTorch CNNs.

The scoring contract is docs/scoring.md (SPEC): per image and filter, the
Frobenius norm of the PCA-transformed output map; per filter, the coefficient
of variation of those norms over the images.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._native import build_info
from .layers import prunable_convs
from .scores import LayerScores, Scores
from .scoring import score
from .stats import FilterStats

__all__ = [
    "FilterStats",
    "LayerScores",
    "Scores",
    "build_info",
    "prunable_convs",
    "score",
    "__version__",
]
