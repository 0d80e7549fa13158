"""Channel ranking by the reconstruction error of the layers that read the
channels: greedy backward elimination under least squares.

A group's channels are read by one or more dense layers (its *consumers*:
convs with ``groups == 1``, linear layers).  When channels are removed and
a consumer's weights are refitted by least squares on what is left (what
``reconstruction.reconstruct`` does for folded models, and what
distillation approaches), the consumer's outputs lose the part of their
variance that only the removed channels explained.  Ranking by that loss,
not by the weights' magnitude, is the channel selection of ThiNet (Luo et
al., ICCV 2017) and of He, Zhang and Sun (ICCV 2017); here it is solved in
closed form, greedily:

* per consumer, the covariance of its input columns (``unfold``'s im2col
  columns, one block of ``kh * kw`` per channel; one column per channel for
  1x1 convs and linear layers) and their cross-covariance with its outputs,
  streamed over the scoring images (centred, as the refit has a bias);
* start from all channels; at each step remove the channel whose block
  raises the summed residual of the consumers least (for an inverse
  covariance ``H`` and least-squares weights ``B = H C``, removing block
  ``J`` costs ``tr(B_J^T H_JJ^-1 B_J)``), and downdate ``H`` and ``B``.

A channel's value is the consumers' residual once it is removed, relative
to their output variance and averaged over the consumers: values increase
along the removal order, so higher means kept longer (the convention of
every criterion), and they are comparable across groups (a share of
variance lost).  The statistics are
those of the unpruned network: what earlier cuts change is left to the
refit and to BatchNorm re-estimation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..recovery.refit import im2col_rows

__all__ = ["ConsumerStats", "consumers", "collect", "eliminate", "removal_residuals", "POSITIONS", "RIDGE"]

# Positions sampled per image and consumer (all of them when fewer): enough
# rows for covariances of a few thousand columns, at a bounded cost on large
# feature maps.
POSITIONS = 256

# Added to the diagonal of the columns' correlation matrix: keeps columns
# that (nearly) repeat each other, or a channel a ReLU clips almost
# everywhere, from making the inverse explode.
RIDGE = 1e-3


@dataclass
class ConsumerStats:
    """Streamed first and second moments of one consumer's input columns
    (the group's channels only) and its outputs."""

    block: int  # columns per channel
    columns: Optional[torch.Tensor] = field(default=None, repr=False)  # the group's columns of the layer's input
    n: int = 0
    sx: Optional[torch.Tensor] = None
    sy: Optional[torch.Tensor] = None
    sxx: Optional[torch.Tensor] = None
    sxy: Optional[torch.Tensor] = None
    syy: Optional[torch.Tensor] = None  # per output, summed squares

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        if self.sxx is None:
            d, o = x.shape[1], y.shape[1]
            self.sx, self.sy = x.new_zeros(d), x.new_zeros(o)
            self.sxx, self.sxy, self.syy = x.new_zeros(d, d), x.new_zeros(d, o), x.new_zeros(o)
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.syy += (y * y).sum(0)

    def covariances(self) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """(input covariance, input-output cross-covariance, total output variance)."""
        if self.n < 2:
            raise ValueError("a consumer saw fewer than two rows of scoring data")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.sxx / self.n - torch.outer(mx, mx)
        cxy = self.sxy / self.n - torch.outer(mx, my)
        energy = float((self.syy / self.n).sum())
        vy = float((self.syy / self.n - my * my).sum())
        if vy <= 1e-12 * energy:  # constant outputs; what is left is rounding
            vy, cxy = 0.0, torch.zeros_like(cxy)
        return cxx, cxy, vy


def consumers(group, dg, width: int) -> List[Tuple[nn.Module, List[int]]]:
    """``(layer, its input channel of each group position)`` for every dense
    layer of a Torch-Pruning group that reads the group's channels one input
    channel per position.  Grouped and depthwise convs (no channel mixing to
    refit) and reshaped inputs (a linear layer after a flatten of a feature
    map) are left out."""
    out = []
    for dep, idxs in group:
        m = dep.target.module
        if not dg.is_in_channel_pruning_fn(dep.handler) or len(idxs) != width:
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            out.append((m, [int(i) for i in idxs]))
    return out


def _block(layer: nn.Module) -> int:
    """Input columns per channel: the kernel's positions for a conv (im2col), 1 for a linear layer."""
    return layer.kernel_size[0] * layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else 1


def _columns(layer: nn.Module, channels: Sequence[int]) -> torch.Tensor:
    block = _block(layer)
    c = torch.as_tensor(channels, dtype=torch.long)
    return (c[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def _rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    """(input columns, outputs) as rows, a sample of positions per image."""
    if isinstance(layer, nn.Linear):
        if x.dim() != 2:  # a linear layer over a sequence: every position is a row
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        return x, y
    return im2col_rows(layer, x, y, POSITIONS, gen)


def collect(
    model: nn.Module, batches: Iterable[torch.Tensor], wanted: Dict[str, List[Tuple[nn.Module, List[int]]]]
) -> Dict[str, List[ConsumerStats]]:
    """One pass of ``model`` over ``batches``: per group root of ``wanted``,
    the statistics of each of its consumers (modules of ``model``)."""
    stats = {root: [] for root in wanted}
    gen = torch.Generator().manual_seed(0)
    hooks = []
    for root, layers in wanted.items():
        for layer, channels in layers:
            if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
                continue  # unfold cannot reproduce these inputs
            s = ConsumerStats(block=_block(layer), columns=_columns(layer, channels))
            stats[root].append(s)

            def hook(mod, inputs, output, s=s):
                x, y = _rows(mod, inputs[0].detach(), output.detach(), gen)
                s.add(x[:, s.columns], y)

            hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


class _Consumer:
    """One consumer's inverse covariance and least-squares weights over the
    channels still alive, downdated as channels are removed."""

    def __init__(self, stats: ConsumerStats, ridge: float) -> None:
        cxx, cxy, var = stats.covariances()
        self.var = var if var > 0 else 1.0  # outputs constant on the images: cxy is 0, so is every cost
        # in units of each column's deviation: the costs do not depend on a
        # column's scale, and the ridge then shrinks every column alike
        # (one loud channel does not set it for all)
        sd = cxx.diagonal().clamp_min(0).sqrt()
        sd = torch.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, torch.ones_like(sd))
        cxx, cxy = cxx / torch.outer(sd, sd), cxy / sd[:, None]
        eye = torch.eye(cxx.shape[0], dtype=cxx.dtype, device=cxx.device)
        self.h = torch.linalg.inv(cxx + ridge * eye)
        self.b = self.h @ cxy
        self.block = stats.block

    def costs(self) -> torch.Tensor:
        """Residual added by removing each alive channel, over the output variance."""
        k = self.block
        n = self.h.shape[0] // k
        if k == 1:
            return (self.b * self.b).sum(1) / self.h.diagonal() / self.var
        idx = torch.arange(n * k, device=self.h.device).view(n, k)
        hjj = self.h[idx[:, :, None], idx[:, None, :]]  # n x k x k
        bj = self.b[idx]  # n x k x o
        return (bj * torch.linalg.solve(hjj, bj)).sum((1, 2)) / self.var

    def cost(self, j: int) -> float:
        """``costs()[j]`` alone."""
        cols = slice(j * self.block, (j + 1) * self.block)
        bj = self.b[cols]
        return float((bj * torch.linalg.solve(self.h[cols, cols], bj)).sum()) / self.var

    def remove(self, j: int) -> None:
        k = self.block
        cols = torch.arange(j * k, (j + 1) * k, device=self.h.device)
        keep = torch.ones(self.h.shape[0], dtype=torch.bool, device=self.h.device)
        keep[cols] = False
        hj = self.h[:, cols]
        inv_jj = torch.linalg.inv(hj[cols])
        self.b = (self.b - hj @ (inv_jj @ self.b[cols]))[keep]
        self.h = (self.h - hj @ inv_jj @ hj.T)[keep][:, keep]


def eliminate(stats: Sequence[ConsumerStats], width: int, ridge: float = RIDGE) -> np.ndarray:
    """Per group position, the consumers' residual (relative to their
    output variance, averaged over consumers) once that channel and every
    channel removed before it are gone: the greedy removal order, as values
    (higher = kept longer)."""
    if not stats:
        raise ValueError("no consumer statistics to rank the channels by")

    def cheapest(parts, alive, step):
        cost = sum(p.costs() for p in parts)
        j = int(torch.argmin(cost))
        return j, float(cost[j])

    values = np.empty(width)
    for channel, lost in _removals(stats, width, ridge, cheapest):
        values[channel] = lost
    return values


def removal_residuals(stats: Sequence[ConsumerStats], order: Sequence[int], ridge: float = RIDGE) -> np.ndarray:
    """For each ``i``, the consumers' residual (as ``eliminate``'s values) once
    the channels ``order[: i + 1]`` are gone: what removing a ranking's
    lowest channels costs the layers reading them, in closed form, for any
    ranking (``eliminate`` follows its own greedy order)."""
    if not stats:
        raise ValueError("no consumer statistics to price the removals with")

    def in_order(parts, alive, step):
        j = alive.index(int(order[step]))
        return j, sum(p.cost(j) for p in parts)

    return np.array([lost for _, lost in _removals(stats, len(order), ridge, in_order)])


def _removals(stats: Sequence[ConsumerStats], steps: int, ridge: float, choose):
    """Removes ``steps`` channels one by one, ``choose(parts, alive, step)``
    giving the position among those alive of the next and its cost; yields
    ``(channel, residual so far)``, averaged over the consumers."""
    parts = [_Consumer(s, ridge) for s in stats]
    alive = list(range(parts[0].h.shape[0] // parts[0].block))
    lost = 0.0
    for step in range(steps):
        j, cost = choose(parts, alive, step)
        lost += max(cost, 0.0)
        channel = alive.pop(j)
        for p in parts:
            p.remove(j)
        yield channel, lost / len(parts)
