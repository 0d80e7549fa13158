"""The selection rules: which channels of a group to keep, from one value per
channel (higher = keep).  The percentile rule of docs/scoring.md §4 and its
fixed-count form, the OCNNA-family values of a layer, and a group's values
from the scores of the convs that produce it (or from a Torch-Pruning
importance)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._util.validate import percentile
from ..scoring.scores import LayerScores
from .groups import feeds_output, out_channel_convs

# the criterion every entry point ranks by unless told otherwise: OCNNA's
# statistics with the activation scale kept, level with the best weight
# criteria at equal structure and the allocation's best at equal cost
# (BENCHMARKS.md); the paper's own score, ``ocnna``, ranked about as
# randomly does on every model measured and is ``--paper``'s
DEFAULT_CRITERION = "ocnna-rms"
PAPER_CRITERION = "ocnna"

__all__ = [
    "DEFAULT_CRITERION",
    "PAPER_CRITERION",
    "select_channels",
    "select_top",
    "select_blocks",
    "kept_count",
    "check_k",
    "SELECTION_RULES",
    "FAMILY",
    "layer_values",
    "group_scores",
    "group_values",
]


def select_channels(group_score: np.ndarray, k: float, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) to keep under docs/scoring.md §4's percentile rule: as many
    channels as lie at or above the k-th percentile (NumPy ``percentile``,
    linear interpolation) of distinct scores, ``kept_count(width, k)``, taken
    in order of score, ties broken by the lower channel index; never none.

    The count does not depend on ties: a threshold test (``score >=
    percentile``) would keep every tied channel, so a layer whose scores are
    all equal (one scoring image, or many dead filters) would lose nothing
    whatever ``k``.  Non-finite scores are refused (a NaN would make the
    order meaningless), naming the group ``name``."""
    s = _finite_vector(group_score, name)
    return select_top(s, kept_count(s.size, k), name=name)


def _finite_vector(values: Any, name: Optional[str]) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64)
    where = f"group {name!r}" if name else "group"
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{where}: scores must be a non-empty 1-D array")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s))
        raise ValueError(f"{where}: non-finite scores at channels {bad[:8].tolist()}; rescore the layer")
    return s


SELECTION_RULES = ("percentile", "count")


def kept_count(width: int, k: float) -> int:
    """How many of ``width`` distinct values the percentile rule keeps: those
    at or above position ``k/100 * (width - 1)`` of the sorted values."""
    return width - int(np.ceil(check_k(k) / 100.0 * (width - 1) - 1e-9))


def select_top(values: np.ndarray, count: int, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) of the ``count`` highest values, ties broken by the
    lower index; non-finite values refused as in ``select_channels``."""
    s = _finite_vector(values, name)
    if not 1 <= count <= s.size:
        raise ValueError(f"cannot keep {count} of {s.size} channels")
    order = np.lexsort((np.arange(s.size), -s))  # by value descending, then index
    return np.sort(order[:count])


# OCNNA-family rankings of one layer's filters, all from the scorer's streamed
# statistics (higher = keep).  "ocnna" is the paper's coefficient of
# variation; the others keep the filter's scale, which the CV divides away.
FAMILY = {
    "ocnna": lambda ls: ls.score,
    "mean-energy": lambda ls: ls.mean,
    # sqrt(E[F^2]): the root-mean-square norm of the filter's PCA-transformed
    # map over the images, i.e. the output energy the filter carries
    "ocnna-rms": lambda ls: torch.sqrt(ls.mean**2 + ls.std**2),
}


def layer_values(ls: LayerScores, criterion: str = DEFAULT_CRITERION) -> np.ndarray:
    """One layer's per-filter values under an OCNNA-family ``criterion``."""
    if criterion not in FAMILY:
        raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
    return FAMILY[criterion](ls).double().numpy()


def group_scores(
    members: Sequence[Tuple[LayerScores, Sequence[int]]], criterion: str = DEFAULT_CRITERION
) -> np.ndarray:
    """docs/scoring.md §4: a group with one scored layer ranks by that layer's values; a
    group spanning several layers (our reading) by the mean over them of each
    layer's values divided by that layer's mean value.  ``criterion`` picks
    the values (``FAMILY``; default OCNNA's score)."""
    if len(members) == 1:
        ls, idxs = members[0]
        return layer_values(ls, criterion)[list(idxs)]
    parts = []
    for ls, idxs in members:
        s = layer_values(ls, criterion)
        m = s.mean()
        parts.append(s[list(idxs)] / m if m > 0 else np.zeros(len(idxs)))
    return np.mean(parts, axis=0)


def check_k(k: float) -> float:
    return percentile(k)


def select_blocks(values: np.ndarray, count: int, name: str, blocks: int) -> np.ndarray:
    """Kept channel indices: the ``count`` highest-valued.  With ``blocks > 1``
    a position within a block is ranked by its mean value over the blocks
    and kept or removed in all of them (how grouped convs stay valid);
    ``count`` is then a multiple of ``blocks``."""
    width = len(values)
    if blocks > 1:
        if width % blocks or count % blocks:
            raise ValueError(f"group {name!r}: {width} channels (keeping {count}) do not split into {blocks} blocks")
        per = values.reshape(blocks, width // blocks).mean(axis=0)
        keep = select_blocks(per, count // blocks, name, 1)
        return np.sort(np.concatenate([keep + b * (width // blocks) for b in range(blocks)]))
    return select_top(values, count, name=name)


def group_values(group, DG, names, scores, importance=None, criterion: str = DEFAULT_CRITERION) -> Optional[np.ndarray]:
    """One value per channel of the group (higher = keep), or ``None`` for a
    group that stays whole: no scored conv decides it, or its channels are
    the model's outputs (a conv classifier's logits keep their number)."""
    width = len(group[0][1])
    members = []
    for mod, idxs in out_channel_convs(group, DG):
        name = names.get(mod)
        if name in scores:
            ls = scores[name]
            if ls is not None and ls.num_channels != mod.out_channels:
                raise ValueError(
                    f"scores for {name!r} have {ls.num_channels} channels, the layer has {mod.out_channels}"
                )
            members.append((ls, idxs))
    if not members or feeds_output(group):
        return None
    if importance is None:
        return group_scores(members, criterion)
    root = names[group[0][0].target.module]
    values = importance.get(root) if isinstance(importance, Mapping) else importance(group)
    if values is None:
        raise ValueError(f"the importance returned no values for group {root!r}")
    values = torch.as_tensor(values).detach().double().cpu().numpy().reshape(-1)
    if values.shape != (width,):
        raise ValueError(f"the importance gave {values.shape[0]} values for group {root!r} of {width} channels")
    return values
