"""Running a network from the middle: a candidate of the width search masks
channels of a few groups, and every layer that runs before the first masked
one computes what it computed for the unmasked network.  So the search keeps
the activations entering a cut (the values that layers after the cut read
from layers before it) for its calibration and evaluation images, and a
candidate runs only the part after its first masked layer: a group deep in
the network costs a fraction of a pass.

The network is cut on its ``torch.fx`` graph (``_util.cut_graph``).  Convolutions, linear layers,
BatchNorms and every module the search masks are leaves (the masks are
forward hooks on them); a model that does not trace (Python control flow on
tensor values) gets ``Segments.build(...) is None`` and whole passes.

Costs are counted in forward-pass equivalents: images run, times the share
of the network's multiply-accumulates in the part they ran through (the
weighted layers; element-wise operations are left out of the share).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from .._util.cut_graph import CutGraph, trace
from ..selection.groups import torch_pruning

__all__ = ["Segments", "Cache", "batch_size", "first_images", "mixed"]


class Cache:
    """The values entering ``cut`` for every calibration and evaluation
    batch (one dict per batch, by graph node name)."""

    def __init__(self, cut: int, calibration: List[Dict[str, Any]], evaluation: List[Dict[str, Any]]) -> None:
        self.cut, self.calibration, self.evaluation = cut, calibration, evaluation

    def nbytes(self) -> int:
        return sum(
            v.numel() * v.element_size()
            for part in (self.calibration, self.evaluation)
            for env in part
            for v in env.values()
            if isinstance(v, torch.Tensor)
        )


class Segments(CutGraph):
    """``model``'s cut-able graph with each cut's share of the network's
    multiply-accumulates (what a pass from there costs)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, example: torch.Tensor) -> None:
        super().__init__(model, graph)
        self._shares = self._mac_shares(example)

    @classmethod
    def build(cls, model: nn.Module, masked: Iterable[str], example: torch.Tensor) -> Optional["Segments"]:
        """The cut-able graph of ``model``, or ``None`` where it does not trace."""
        try:
            return cls(model, trace(model, masked), example)
        except Exception:  # noqa: BLE001 - any tracing failure means: run whole passes
            return None

    def _mac_shares(self, example: torch.Tensor) -> List[float]:
        """Per cut, the share of the MACs of the weighted layers at or after it."""
        tp = torch_pruning()
        _, _, layer_macs, _ = tp.utils.count_ops_and_params(self.model, example, layer_wise=True)
        per_node = [0.0] * len(self.nodes)
        for i, n in enumerate(self.nodes):
            if n.op == "call_module":  # a leaf may hold layers of its own (a conv with its norm put back)
                per_node[i] = sum(float(layer_macs.get(m) or 0) for m in self.modules[str(n.target)].modules())
        total = sum(per_node) or 1.0
        shares, acc = [0.0] * (len(self.nodes) + 1), 0.0
        for i in range(len(self.nodes) - 1, -1, -1):
            acc += per_node[i]
            shares[i] = acc / total
        return shares

    def share(self, cut: int) -> float:
        return self._shares[cut]

    def entry(self, names: Iterable[str]) -> int:
        """The cut before the first call of any of ``names`` (0 when one is never called)."""
        cuts = [self.first_call.get(name) for name in names]
        if not cuts or any(c is None for c in cuts):
            return 0
        return min(c for c in cuts if c is not None)

    def norms_after(self, cut: int) -> List[nn.Module]:
        """The BatchNorm layers first called at or after ``cut``."""
        out = []
        for name, i in self.first_call.items():
            if i >= cut:  # a leaf's own norms too (a folded conv with its norm put back is one leaf)
                out += [m for m in self.modules[name].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return out


def batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise TypeError("a cached batch holds no tensor")


def first_images(envs: List[Dict[str, Any]], n: int, whole: bool) -> List[Dict[str, Any]]:
    """The batches covering the first ``n`` images, the last one cut (``whole``: not cut)."""
    out, seen = [], 0
    for env in envs:
        size = batch_size(env)
        take = size if whole else min(size, n - seen)
        out.append(
            {k: (v[:take] if isinstance(v, torch.Tensor) and v.shape[:1] == (size,) else v) for k, v in env.items()}
        )
        seen += take
        if seen >= n:
            break
    return out


def mixed(batches: Sequence[torch.Tensor], seed: int = 0) -> List[torch.Tensor]:
    """The same images in batches of the same sizes, in a seeded random order.

    Data sets often list one class after another (the shipped JPEG CIFAR-10
    does, and a class-balanced subset keeps that order), and the curves are
    measured on the first share of the evaluation images, normalised by
    their own statistics in one-pass measurement: in order, half the images
    held half the classes, so every curve measured what masking cost on five
    of the ten.  Mixed, any first share holds all of them.  (A loss over all
    the images does not depend on their order.)"""
    batches = list(batches)
    if len(batches) < 2:
        return batches
    images = torch.cat(batches)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).to(images.device)
    return list(images[order].split([int(b.shape[0]) for b in batches]))
