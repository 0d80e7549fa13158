"""Least-squares reconstruction of a pruned network's layers: what a
folded-BatchNorm network gets after surgery (nothing to re-estimate), and
what a BatchNorm network gets after re-estimation when asked (``refit``).

After surgery a layer sees fewer (and, downstream of other cuts, altered)
inputs.  Layer by layer in execution order, each layer's weights are
refitted so that, on calibration images, its outputs through the *pruned*
network come as close as least squares allows to the outputs the *unpruned*
network produced there (the reconstruction step of channel pruning by He,
Zhang and Sun, ICCV 2017, and of ThiNet, applied here after the structure is
chosen).  Dense layers (convs with one group, linear layers) get a
ridge-regularised regression over all their kept inputs plus an intercept:
1x1 convs with stride 1 and linear layers on every position, other convs on
their im2col columns at ``POSITIONS`` random positions of each image;
depthwise convs, whose channels do not mix, get a per-channel scale and
shift.  Other layers are left as they are.

A layer a BatchNorm reads is fitted in that BatchNorm's frame: its target
is the unpruned BatchNorm's output mapped back through the pruned
BatchNorm's (re-estimated) statistics, and the intercept goes into the
pruned BatchNorm's running mean, so the structure (no conv bias) is kept.

The statistics are streamed: per layer, the Gram matrix of the pruned
inputs and their cross-products with the targets, summed over batches.
Both networks are advanced on their ``torch.fx`` graphs from one layer to
fit to the next, the values entering it kept for every calibration image
(one pass in all); a network that does not trace, or whose kept values
would not fit ``layer_inputs.WALK_BYTES``, is run from its input up to each layer
instead (a pass per layer: quadratic in depth, one batch held).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._util.module_state import restore_training_flags, training_flags
from .._util.placement import input_of, model_device, placement
from .layer_inputs import input_at, layer_inputs

__all__ = ["reconstruct", "input_at", "ridge_solve", "im2col_rows", "RIDGE", "POSITIONS"]

# The ridge, relative to the mean input energy: small enough to leave a
# well-determined fit alone, large enough to keep a nearly constant input
# (a channel ReLU6 clips everywhere) from blowing up its weight.
RIDGE = 1e-3

# im2col positions drawn per image for a conv that is not 1x1: its columns
# are kernel-area times wider, and neighbouring positions repeat most of
# what a sample already holds, so a sample keeps the Gram matrix cheap.
POSITIONS = 64


_BatchNorm = nn.modules.batchnorm._BatchNorm


def _pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (
        m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid")
    )


def _kind(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.Linear):
        return "dense"
    if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros":
        return None
    if m.groups == 1 and (_pointwise(m) or m.padding == "valid" or not isinstance(m.padding, str)):
        return "dense"  # 'same' padding of a larger kernel: unfold cannot take it
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
        return "depthwise"
    return None


def _rows(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """One row per position, one column per channel, in float64: a conv's
    (N, C, H, W), or a linear layer's (..., C)."""
    if not channels_last:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1, t.shape[-1]).double()


def _trace(model: nn.Module, x: torch.Tensor) -> Tuple[List[str], Dict[str, str]]:
    """The convs and linear layers in execution order, and for each one
    whose output a BatchNorm reads as it is, that BatchNorm's name."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    norms = {m: n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    order: List[str] = []
    made: Dict[int, Tuple[str, torch.Tensor]] = {}  # the outputs stay referenced, so ids stay unique
    follower: Dict[str, str] = {}

    def read(m, args):
        hit = made.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            follower.setdefault(hit[0], norms[m])

    handles = [m.register_forward_pre_hook(lambda m, _a: order.append(names[m])) for m in names]
    handles += [m.register_forward_hook(lambda m, _a, out: made.update({id(out): (names[m], out)})) for m in names]
    handles += [m.register_forward_pre_hook(read) for m in norms]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order)), follower


def _kept(plan: Mapping[str, Any], name: str, n: int) -> torch.Tensor:
    kept = (plan.get("kept_outputs") or {}).get(name)
    return torch.as_tensor(list(kept), dtype=torch.int64) if kept is not None else torch.arange(n)


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float, intercept: bool = True) -> torch.Tensor:
    """The weights ``w`` (outputs x inputs; with ``intercept`` the last input
    is the constant 1) minimising the squared error plus ``ridge`` x the mean
    input energy x ``|w|^2`` over all but the intercept, from the Gram matrix
    of the inputs and the outputs' cross-products with them."""
    penalty = torch.ones(gram.shape[0], dtype=gram.dtype)
    if intercept:
        penalty[-1] = 0.0  # the intercept is not shrunk
    energy = gram.diagonal()[:-1] if intercept else gram.diagonal()
    scale = ridge * float(energy.mean().clamp_min(1e-12))
    system = gram + scale * torch.diag(penalty)
    try:
        return torch.linalg.solve(system, cross.T).T
    except torch.linalg.LinAlgError:  # no ridge and an input that never varies: the least-norm fit
        return (torch.linalg.pinv(system, hermitian=True) @ cross.T).T


class _Frame:
    """Maps the unpruned network's pre-BatchNorm values of the kept channels
    to the values the pruned BatchNorm (its statistics re-estimated, its
    affine weights the base's, as surgery keeps them) turns into the same
    output: ``(z - m0) * s / s0 + m``.  Without a BatchNorm: the identity."""

    def __init__(self, old: Optional[nn.Module], new: Optional[nn.Module], kept: torch.Tensor) -> None:
        self.norm = new if old is not None and new is not None and new.running_mean is not None else None
        if self.norm is None:
            return
        s0 = (old.running_var.double()[kept] + old.eps).sqrt()
        s = (new.running_var.double() + new.eps).sqrt()
        self.m0, self.ratio, self.m = old.running_mean.double()[kept], s / s0, new.running_mean.double()

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: rows of the kept channels (channels last)."""
        return y if self.norm is None else (y - self.m0) * self.ratio + self.m


def im2col_rows(
    conv: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: int, gen: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A conv's input ``x`` as im2col rows (one per output position, one
    column per input channel and kernel position) and its output ``y`` as
    rows at the same positions: ``positions`` drawn from ``gen`` per batch
    when the map has more."""
    pad = 0 if conv.padding == "valid" else conv.padding
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)
    outs = y.flatten(2)
    if cols.shape[-1] > positions:
        pick = torch.randperm(cols.shape[-1], generator=gen)[:positions].to(cols.device)
        cols, outs = cols[:, :, pick], outs[:, :, pick]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), outs.transpose(1, 2).reshape(-1, outs.shape[1])


def _pairs_rows(old: nn.Module, new: nn.Module, pairs, kept: torch.Tensor, gen: torch.Generator):
    """Per batch, the pruned layer's input rows and the unpruned layer's
    output rows of the kept channels, at every position (1x1 convs, linear
    layers) or at ``POSITIONS`` random ones per image (im2col columns)."""
    for x_old, x_new in pairs:
        y = old(x_old)
        if _pointwise(new):
            linear = isinstance(new, nn.Linear)
            yield _rows(x_new, linear), _rows(y, linear)[:, kept]
            continue
        xs, ys = im2col_rows(new, x_new, y[:, kept], POSITIONS, gen)
        yield xs.double(), ys.double()


def _fit_dense(old, new, pairs, kept, ridge: float, frame: _Frame, gen: torch.Generator) -> None:
    intercept = frame.norm is not None or new.bias is not None  # where an intercept can go
    gram = cross = None
    for xs, y in _pairs_rows(old, new, pairs, kept, gen):
        y = frame(y)
        if intercept:
            xs = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype)], 1)
        g, c = xs.T @ xs, y.T @ xs
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    w = ridge_solve(gram, cross, ridge, intercept)
    if not intercept:
        _assign(new, w, None, None)
    elif new.bias is not None:
        _assign(new, w[:, :-1], w[:, -1], None)
    else:
        _assign(new, w[:, :-1], None, (frame, w[:, -1]))


def _fit_depthwise(old, new, pairs, kept, frame: _Frame) -> None:
    s = None
    for x_old, x_new in pairs:
        y_old, y_new = frame(_rows(old(x_old), False)[:, kept]), _rows(new(x_new), False)
        t = torch.stack([y_new.sum(0), y_old.sum(0), (y_new * y_new).sum(0), (y_new * y_old).sum(0)])
        s = (t, y_new.shape[0]) if s is None else (s[0] + t, s[1] + y_new.shape[0])
    m_new, m_old, e_nn, e_no = s[0] / s[1]  # means over positions: y, y_base, y^2, y * y_base
    var = e_nn - m_new * m_new
    a = torch.where(var > 1e-12, (e_no - m_new * m_old) / var.clamp_min(1e-12), torch.ones_like(var))
    bias = new.bias.detach().double() if new.bias is not None else torch.zeros_like(a)
    w = new.weight.detach().double() * a.view(-1, 1, 1, 1)
    shift = a * bias + m_old - a * m_new
    if new.bias is not None or frame.norm is None:
        _assign(new, w, shift, None)
    else:
        _assign(new, w, None, (frame, shift))


def _assign(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor], into_norm) -> None:
    """New weights, the intercept into the bias or, for a layer without one
    that a BatchNorm reads, into that BatchNorm's running mean (a layer
    without either was fitted without an intercept).  A layer that had no
    bias never gets one: the saved model must load into its architecture."""
    w = layer.weight
    with torch.no_grad():
        w.copy_(weight.reshape(w.shape).to(w.dtype))
        if bias is not None:
            layer.bias.copy_(bias.to(w.dtype))
        if into_norm is not None:
            frame, shift = into_norm
            frame.norm.running_mean.sub_(shift.to(frame.norm.running_mean))


def reconstruct(
    pruned: nn.Module,
    base: nn.Module,
    plan: Mapping[str, Any],
    batches: Iterable[Any],
    *,
    ridge: float = RIDGE,
    progress: bool = False,
    device: Union[None, str, torch.device] = None,
    one_pass: bool = True,
) -> Dict[str, Any]:
    """Refits, in place, every layer of ``pruned`` downstream of the first
    cut (see the module's text) to the outputs of ``base`` on ``batches``
    (held in memory once read).
    ``plan``: what ``prune`` returned (``kept_outputs`` by layer name).
    A layer a BatchNorm reads is fitted in that BatchNorm's frame (the
    module's text): run it after the BatchNorm statistics are re-estimated.
    ``one_pass``: advance both networks from one layer to the next on their
    graphs (one pass in all; where they trace and the kept values fit
    ``layer_inputs.WALK_BYTES``), else a pass up to each layer.  ``device``: where both
    models run (default: where ``pruned`` is); each is moved back after.
    Returns ``{"reconstructed": dense layers, "rescaled": depthwise convs,
    "images": n, "refit": "one pass" or "a pass per layer"}``."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    home, run = placement(pruned, device)
    base_home = model_device(base)
    inputs = [input_of(b).to(run) for b in batches]
    if not inputs:
        raise ValueError("reconstruction needs calibration batches")
    flags = training_flags(pruned), training_flags(base)
    pruned.eval().to(run), base.eval().to(run)
    old_modules, new_modules = dict(base.named_modules()), dict(pruned.named_modules())
    counts = {"reconstructed": 0, "rescaled": 0}
    gen = torch.Generator().manual_seed(0)  # the im2col positions: the same fit on every run
    walk: Any = None
    try:
        with torch.no_grad():
            order, follower = _trace(pruned, inputs[0][:1])
            todo = _layers_to_fit(order, plan, new_modules, old_modules, follower)
            steps: Any = todo
            if progress and todo:
                from tqdm.auto import tqdm

                steps = tqdm(todo, desc="reconstruct", unit="layer")
            walk = layer_inputs(base, pruned, [name for name, _ in todo], inputs, one_pass)
            for name, kind in steps:
                old, new, norm = old_modules[name], new_modules[name], follower.get(name)
                kept = _kept(plan, name, old.weight.shape[0])
                frame = _Frame(old_modules.get(norm), new_modules.get(norm), kept)
                if kind == "dense":
                    _fit_dense(old, new, walk.inputs_of(name), kept, ridge, frame, gen)
                else:
                    _fit_depthwise(old, new, walk.inputs_of(name), kept, frame)
                counts["reconstructed" if kind == "dense" else "rescaled"] += 1
    finally:
        pruned.to(home), base.to(base_home)
        restore_training_flags(flags[0])
        restore_training_flags(flags[1])
    return {**counts, "images": sum(int(x.shape[0]) for x in inputs), "refit": walk.how}


def _layers_to_fit(order, plan, new_modules, old_modules, follower) -> List[Tuple[str, str]]:
    """(name, kind) of the layers after the first cut that can be refitted:
    a depthwise conv needs a bias or a BatchNorm after it for its shift."""
    cut = [i for i, n in enumerate(order) if n in (plan.get("kept_outputs") or {})]
    todo: List[Tuple[str, str]] = []
    for name in order[cut[0] + 1 :] if cut else []:
        m, kind = new_modules[name], _kind(new_modules[name])
        if kind is None or name not in old_modules:
            continue
        if kind == "depthwise" and m.bias is None and name not in follower:
            continue
        todo.append((name, kind))
    return todo
