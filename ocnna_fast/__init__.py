"""ocnna-fast: exact, streaming OCNNA filter scoring for PyTorch CNNs.

The scoring contract is docs/scoring.md: per image and filter, the
Frobenius norm of the PCA-transformed output map; per filter, the coefficient
of variation of those norms over the images.
"""

from __future__ import annotations

from ._native import build_info
from ._version import __version__
from .budget.entry import prune
from .budget.spec import PruneSpec
from .data.evaluation import evaluate
from .data.loader import LoaderImages
from .data.tensorimages import TensorImages
from .errors import InternalError
from .models import build as _zoo_build
from .recovery.batchnorm import recalibrate_batchnorm
from .recovery.distill import distill, finetune
from .scoring.layers import prunable_convs
from .scoring.scorer import score
from .scoring.scores import LayerScores, Scores
from .scoring.stats import FilterStats
from .surgery.plans import apply_plan, load_pruned, save_pruned, set_model_builder
from .surgery.prune import count_params

# the in-memory data set's earlier name, kept for code written against it
distill_data = TensorImages

# load_pruned rebuilds the architecture a plan names from the model zoo
set_model_builder(lambda arch, num_classes: _zoo_build(arch, num_classes=num_classes))

__all__ = [
    "FilterStats",
    "InternalError",
    "LayerScores",
    "PruneSpec",
    "Scores",
    "TensorImages",
    "LoaderImages",
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
