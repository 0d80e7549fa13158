"""A network run from the middle, on its ``torch.fx`` graph: the values
entering a cut (what nodes at or after it read from nodes before it) are
kept, and the network goes on from there.  The width search uses it to run
a candidate from its first masked layer; the refit to fit its layers one
after another in one pass of the calibration images instead of one pass
up to each layer.

Convolutions, linear layers, BatchNorms and the modules a caller names are
leaves (their hooks fire, their weights are read when they run); a model
that does not trace (Python control flow on tensor values) has no graph,
and its callers fall back to whole passes.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import torch
import torch.fx as fx
from torch import nn

__all__ = ["CutGraph", "trace"]

_WEIGHTED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _Tracer(fx.Tracer):
    """Weighted layers and the named modules stay whole."""

    def __init__(self, leaves: Set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or isinstance(m, _WEIGHTED) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: Iterable[str] = ()) -> fx.Graph:
    """``model``'s graph with the weighted layers and ``leaves`` whole (raises where it does not trace)."""
    return _Tracer(set(leaves)).trace(model)


class CutGraph:
    """``model``'s graph, its nodes in execution order; a cut is a node
    index (0: the input)."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
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

    def bytes_entering(self, x: torch.Tensor, cuts: Sequence[int]) -> float:
        """The most bytes the values entering any of ``cuts`` (ascending) take for the batch ``x``."""
        env, at, most = self.inputs([x])[0], 0, 0.0
        with torch.no_grad():
            for cut in cuts:
                env = self.run(env, at, cut, self.entering(cut))
                at = cut
                most = max(most, float(sum(v.numel() * v.element_size() for v in env.values() if torch.is_tensor(v))))
        return most
