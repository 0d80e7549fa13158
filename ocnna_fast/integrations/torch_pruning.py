"""OCNNA scores as a Torch-Pruning importance.

    imp = OCNNAImportance(ocnna_fast.score(model, loader))
    pruner = torch_pruning.pruner.BasePruner(model, example_inputs, importance=imp,
                                             pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()

For a group with one producing conv the importance is that conv's OCNNA score;
for coupled groups (residual adds, concatenations) it is docs/scoring.md §4's rule,
the mean over the group's scored convs of score / layer mean - the same numbers
``ocnna_fast.prune`` ranks by.  Groups with no scored conv return ``None``, which
Torch-Pruning skips.

Torch-Pruning's own pruner builds its dependency graph before it calls any
importance, so a model it cannot trace (a channel shuffle, as in ShuffleNet)
fails inside Torch-Pruning; ``OCNNAImportance.check_model(model, example)``
refuses such a model up front with the reason.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..scoring.scores import LayerScores
from ..selection.groups import out_channel_convs
from ..selection.rules import DEFAULT_CRITERION, FAMILY, group_scores

try:
    from torch_pruning.pruner.importance import Importance as _Base
except ImportError:  # pragma: no cover - torch-pruning is a dependency
    _Base = object  # type: ignore[assignment,misc]

__all__ = ["OCNNAImportance"]


class OCNNAImportance(_Base):  # type: ignore[misc,valid-type]
    """Torch-Pruning importance backed by precomputed OCNNA ``Scores``.

    Args:
        scores: mapping from a conv's qualified name (as in the model passed to
            the pruner) to its ``LayerScores``, e.g. ``ocnna_fast.score(...)``.
        model: the model being pruned.  Needed with ``iterative_steps > 1``:
            after a step a conv has fewer filters than its scores, and each
            surviving filter is matched to its original index through its
            kernels, which pruning never changes (recorded here before pruning).
        criterion: which statistic ranks the filters: ``"ocnna-rms"``
            (default, the project's measured best), ``"ocnna"`` (the paper's
            score) or ``"mean-energy"`` (``ocnna_fast.surgery.prune.FAMILY``).
    """

    @staticmethod
    def check_model(model: nn.Module, example_inputs: torch.Tensor) -> None:
        """Raises ``ValueError`` naming the operation when Torch-Pruning
        cannot build the model's dependency graph (call it before creating
        Torch-Pruning's pruner, which would fail with a bare error)."""
        from ..selection.groups import dependency_graph

        dependency_graph(model, example_inputs)

    def __init__(
        self, scores: Mapping[str, LayerScores], model: Optional[nn.Module] = None, criterion: str = DEFAULT_CRITERION
    ) -> None:
        if criterion not in FAMILY:
            raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
        self.scores = scores
        self.criterion = criterion
        self._names = {m: n for n, m in model.named_modules()} if model is not None else None
        # per scored conv: the kernel of each (filter, input channel) before pruning
        self._original = {}
        if model is not None:
            for name, m in model.named_modules():
                if isinstance(m, nn.Conv2d) and name in scores:
                    self._original[m] = m.weight.detach().clone()
        self._lookup = {}

    def _original_indices(self, name: str, module: nn.Module, idxs) -> list:
        """Current filter indices -> indices at scoring time.

        Pruning removes whole filters and whole input channels but never
        changes a surviving kernel, so each (filter, input channel) kernel of
        the pruned layer is found among the original ones; the filters whose
        kernels contain all of a current filter's kernels identify it."""
        if module not in self._original:
            raise ValueError(
                f"layer {name!r} has {module.out_channels} filters but its scores have "
                f"{self.scores[name].num_channels}; pass model= to OCNNAImportance before pruning"
            )
        if module not in self._lookup:
            table = {}
            w = self._original[module]
            for f in range(w.shape[0]):
                for c in range(w.shape[1]):
                    table.setdefault(w[f, c].numpy().tobytes(), set()).add(f)
            self._lookup[module] = table
        table = self._lookup[module]
        current = module.weight.detach()
        out = []
        for i in idxs:
            candidates = None
            for c in range(current.shape[1]):
                found = table.get(current[int(i), c].numpy().tobytes(), set())
                candidates = set(found) if candidates is None else candidates & found
                if candidates is not None and len(candidates) <= 1:
                    break
            if not candidates:
                raise ValueError(f"filter {int(i)} of {name!r} matches no filter it had when it was scored")
            out.append(min(candidates))  # several only if filters were identical
        return out

    def _name_of(self, group, module: nn.Module) -> Optional[str]:
        if self._names is not None:
            return self._names.get(module)
        dg = getattr(group, "_DG", None)
        return getattr(dg, "_module2name", {}).get(module) if dg is not None else None

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        dg = getattr(group, "_DG", None)
        members = []
        for mod, plain in out_channel_convs(group, dg):
            name = self._name_of(group, mod)
            ls = self.scores.get(name) if name is not None else None
            if ls is None:
                continue
            if ls.num_channels != mod.out_channels:  # pruned by an earlier iterative step
                plain = self._original_indices(name, mod, plain)
            if max(plain) >= ls.num_channels:
                raise ValueError(f"scores for {name!r} have {ls.num_channels} channels; index {max(plain)} requested")
            members.append((ls, plain))
        if not members:
            return None
        return torch.as_tensor(group_scores(members, self.criterion), dtype=torch.float32)
