"""ocnna-fast: exact, streaming OCNNA filter scoring for PyTorch CNNs.

The scoring contract is docs/scoring.md: per image and filter, the
Frobenius norm of the PCA-transformed output map; per filter, the coefficient
of variation of those norms over the images.
"""

from __future__ import annotations

from ._native import build_info
from ._version import __version__
from .batchnorm import recalibrate_batchnorm
from .budget import prune
from .distill import TensorImages as distill_data
from .distill import distill, evaluate, finetune
from .errors import InternalError
from .layers import prunable_convs
from .models import build as _zoo_build
from .pruning import apply_plan, count_params, load_pruned, save_pruned, set_model_builder
from .scores import LayerScores, Scores
from .scoring import score
from .stats import FilterStats

# load_pruned rebuilds the architecture a plan names from the model zoo
set_model_builder(lambda arch, num_classes: _zoo_build(arch, num_classes=num_classes))

__all__ = [
    "FilterStats",
    "InternalError",
    "LayerScores",
    "Scores",
    "apply_plan",
    "build_info",
    "count_params",
    "distill",
    "distill_data",
    "evaluate",
    "finetune",
    "load_pruned",
    "prunable_convs",
    "prune",
    "recalibrate_batchnorm",
    "save_pruned",
    "score",
    "__version__",
]
