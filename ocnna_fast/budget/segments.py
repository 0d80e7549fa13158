"""Running a network from the middle: a candidate of the width search masks
channels of a few groups, and every layer that runs before the first masked
one computes what it computed for the unmasked network.  So the search keeps
the activations entering a cut (the values that layers after the cut read
from layers before it) for its calibration and evaluation images, and a
candidate runs only the part after its first masked layer: a group deep in
the network costs a fraction of a pass.

The network is cut on its ``torch.fx`` graph.  Convolutions, linear layers,
BatchNorms and every module the search masks are leaves (the masks are
forward hooks on them); a model that does not trace (Python control flow on
tensor values) gets ``Segments.build(...) is None`` and whole passes.

Costs are counted in forward-pass equivalents: images run, times the share
of the network's multiply-accumulates in the part they ran through (the
weighted layers; element-wise operations are left out of the share).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import torch
import torch.fx as fx
from torch import nn

from ..selection.groups import torch_pruning

__all__ = ["Segments", "Cache", "batch_size", "first_images"]

_WEIGHTED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _Tracer(fx.Tracer):
    """Weighted layers and the masked modules stay whole (their hooks must fire)."""

    def __init__(self, leaves: Set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or isinstance(m, _WEIGHTED) or super().is_leaf_module(m, qualname)


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


class Segments:
    """``model``'s graph, its nodes in execution order; a cut is a node
    index (0: the input)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, example: torch.Tensor) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.nodes: List[fx.Node] = list(graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise TypeError(f"the model takes {len(inputs)} inputs; a cut network needs exactly one")
        self.input = inputs[0].name
        # per node, the nodes whose last reader it is: their values are freed
        # after it runs (an interpreter keeping every value would hold a whole
        # pass's activations at once)
        last = {n: max((self.index[u] for u in n.users), default=i) for i, n in enumerate(self.nodes)}
        self.frees: List[List[str]] = [[] for _ in self.nodes]
        for n, i in last.items():
            self.frees[i].append(n.name)
        self.first_call: Dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.op == "call_module":
                self.first_call.setdefault(str(n.target), i)
        self._shares = self._mac_shares(example)

    @classmethod
    def build(cls, model: nn.Module, masked: Iterable[str], example: torch.Tensor) -> Optional["Segments"]:
        """The cut-able graph of ``model``, or ``None`` where it does not trace."""
        try:
            graph = _Tracer(set(masked)).trace(model)
            return cls(model, graph, example)
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

    def entering(self, cut: int) -> List[str]:
        """The nodes before ``cut`` that a node at or after it reads."""
        return [
            n.name
            for n in self.nodes[:cut]
            if n.op not in ("get_attr", "output") and any(self.index[u] >= cut for u in n.users)
        ]

    def inputs(self, batches: Sequence[torch.Tensor]) -> List[Dict[str, Any]]:
        return [{self.input: x} for x in batches]

    def run(self, env: Mapping[str, Any], start: int, stop: Optional[int] = None, keep: Sequence[str] = ()):
        """Runs nodes ``start`` to ``stop`` from the values in ``env``: the
        network's output when ``stop`` is None, else the values of ``keep``."""
        values = dict(env)

        def lookup(n: fx.Node):
            if n.name not in values and n.op == "get_attr":  # constants are read where they are used
                values[n.name] = self._call(n, value)
            return values[n.name]

        def value(a):
            return fx.node.map_arg(a, lookup)

        stop = len(self.nodes) if stop is None else stop
        kept = set(keep)
        for i in range(start, stop):
            n = self.nodes[i]
            if n.op == "placeholder":
                continue
            if n.op == "output":
                return value(n.args[0])
            values[n.name] = self._call(n, value)
            for name in self.frees[i]:
                if name not in kept:
                    values.pop(name, None)
        return {k: values[k] for k in keep}

    def _call(self, n: fx.Node, value):
        args, kwargs = value(n.args), value(n.kwargs)
        if n.op == "call_module":
            return self.modules[str(n.target)](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], str(n.target))(*args[1:], **kwargs)
        if n.op == "get_attr":
            obj: Any = self.model
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise TypeError(f"graph node {n.name}: unsupported op {n.op}")

    def advance(self, envs: Sequence[Mapping[str, Any]], start: int, cut: int) -> List[Dict[str, Any]]:
        """The values entering ``cut`` for each batch, from those entering ``start``."""
        keep = self.entering(cut)
        with torch.no_grad():
            return [self.run(env, start, cut, keep) for env in envs]


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
