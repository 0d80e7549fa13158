"""Where the refit reads each layer's input, in the unpruned and the pruned
network: advanced on both networks' ``torch.fx`` graphs from one layer to
fit to the next (one pass of the calibration images in all), or, where a
network does not trace or the kept values would not fit ``WALK_BYTES``,
from the input up to each layer (a pass per layer, quadratic in depth)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.fx as fx
from torch import nn

from .._util.cut_graph import CutGraph, trace

__all__ = ["WALK_BYTES", "input_at", "layer_inputs"]

# What the one-pass refit may keep of both networks' activations between two
# layers, for all the calibration images at once; beyond it, a pass up to each
# layer (slower, one batch held).  The unpruned network's part per image: 1.8 MB
# for MobileNet v1 0.75 at 192 pixels, 4.8 MB for MobileNet v2 and
# EfficientNet-Lite0 at 224 (so 500 images of those and their pruned copy fit).
WALK_BYTES = 6 << 30


class _Stop(Exception):
    """Raised by a hook once the layer being fitted has its input."""


def input_at(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s input when ``model`` runs on ``x`` (the pass stops there;
    the caller chooses grad mode)."""
    got: List[torch.Tensor] = []

    def pre(_m, args):
        got.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(pre)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise ValueError("a layer to reconstruct did not run on the calibration batches")
    return got[0]


def layer_inputs(base: nn.Module, pruned: nn.Module, names: List[str], inputs: List[torch.Tensor], one_pass: bool):
    """What gives the layers ``names`` (in execution order) their inputs, in turn."""
    walk = _Walk.start(base, pruned, names, inputs) if one_pass and names else None
    return walk or _PassPerLayer(base, pruned, inputs)


class _PassPerLayer:
    """Both networks from their input up to each layer, batch by batch."""

    how = "a pass per layer"

    def __init__(self, base: nn.Module, pruned: nn.Module, inputs: List[torch.Tensor]) -> None:
        self.models, self.inputs = (base, pruned), inputs
        self.modules = [dict(m.named_modules()) for m in self.models]

    def inputs_of(self, name: str):
        """Per batch, the layer's input in the base and in the pruned network."""
        (base, pruned), (old, new) = self.models, (self.modules[0][name], self.modules[1][name])
        return ((input_at(base, old, x), input_at(pruned, new, x)) for x in self.inputs)


class _Walk:
    """Both networks on every calibration batch, advanced from one layer to
    fit to the next on their graphs (``_util.cut_graph``): the values entering
    the layer are kept between fits, so the refit costs one pass of each
    network instead of one pass up to each layer (quadratic in depth).  The
    pruned network's part runs after the layers before it were refitted, so
    each layer sees the inputs the per-layer passes would give it."""

    how = "one pass"

    def __init__(self, graphs: Tuple[CutGraph, CutGraph], cuts: Dict[str, int], inputs: List[torch.Tensor]) -> None:
        self.graphs, self.cuts, self.at = graphs, cuts, 0
        self.envs = [g.inputs(inputs) for g in graphs]

    @classmethod
    def start(cls, base: nn.Module, pruned: nn.Module, names: List[str], inputs: List[torch.Tensor]):
        """The walk over ``names`` (in execution order), or None where either
        network does not trace, the two graphs differ, or the kept values
        would not fit ``WALK_BYTES`` (on a GPU, half its free memory at most)."""
        try:
            graphs = CutGraph(base, trace(base)), CutGraph(pruned, trace(pruned))
        except Exception:  # noqa: BLE001 - any tracing failure means: a pass up to each layer
            return None
        if [n.name for n in graphs[0].nodes] != [n.name for n in graphs[1].nodes]:
            return None
        where = {name: graphs[1].first_call.get(name, -1) for name in names}
        order = [where[name] for name in names]
        if min(order, default=0) < 0 or order != sorted(order) or len(set(order)) != len(order):
            return None
        if any(not isinstance(graphs[1].nodes[c].args[0], fx.Node) for c in order):
            return None
        images = sum(int(x.shape[0]) for x in inputs)  # (the same graph: the same cuts in both)
        room = WALK_BYTES
        if inputs[0].is_cuda:  # the kept values live on the device: leave it half its free memory
            room = min(room, torch.cuda.mem_get_info(inputs[0].device)[0] // 2)
        if sum(g.bytes_entering(inputs[0][:1], order) for g in graphs) * images > room:
            return None
        return cls(graphs, where, inputs)

    def inputs_of(self, name: str) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per batch, the layer's input in the base and in the pruned network."""
        cut = self.cuts[name]
        self.envs = [g.advance(envs, self.at, cut) for g, envs in zip(self.graphs, self.envs)]
        self.at = cut
        arg = self.graphs[1].nodes[cut].args[0].name
        return [(b[arg], p[arg]) for b, p in zip(*self.envs)]
