"""Loss curves predicted instead of measured: for every group and share at
once, the KL divergence from the base model's predictions that masking the
share's lowest-ranked channels would cause, to second order.

Each group's channels get a gate (1 in the base model) at every layer that
outputs them; masking a set S of them moves its gates from 1 to 0.  Around
the base model the KL divergence of such a move ``d`` is about
``d' F d / 2``, with ``F`` the Fisher information of the gates: per image,
``E_y[(sum over S of d log p(y|x) / d gate)^2] / 2`` with ``y`` drawn from
the base model's own prediction.  One forward pass and ``samples`` backward
passes (to the gates only) over the images price every share of every group:
the group Fisher importance of Liu et al. (ICML 2021, "Group Fisher Pruning
for Practical Network Compression") with the channels' cross terms kept, so
a whole removed set is priced, not a sum of single channels.

The prediction knows nothing of the BatchNorm re-estimation that follows a
removal, and is larger than the measured losses.  Across groups it ranks
like the measurement on ResNet-20 (Spearman 0.84-0.92), loosely on ResNet-56
(0.56-0.64) and not on MobileNet v1, where it prices the middle groups 2.5 to
31 times their measured loss and the last one under it: the search on
these curves left 13.4% after the folded correction where the measured ones
left 50.2% (docs/budget-experiments.md, "Could the curves be predicted?").
So it is an option (``--curves fisher``) for the experiments it serves, not
the default.
"""

from __future__ import annotations

import time
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from .allocation import GroupInfo
from .masking import lowest_first
from .sensitivity import FRACTIONS, SensitivityCurves

__all__ = ["fisher_curves", "predicted_sensitivity", "FISHER_SAMPLES"]

# labels drawn per image for the Fisher information's expectation
FISHER_SAMPLES = 1
# images per backward pass: the graph of a batch is kept for the backward, and
# a large evaluation batch at 224 px would hold gigabytes of activations
CHUNK = 64


def predicted_sensitivity(model: nn.Module, groups, images: Sequence[torch.Tensor], evaluator, progress: bool = False):
    """The sensitivity allocation's curves at its ``FRACTIONS``, predicted
    on ``images`` (``fisher_curves``); their cost joins ``evaluator``'s
    forward-pass equivalents, a backward pass counted as two forward ones
    (it runs the transposed layers, and no weight gradient)."""
    t = time.perf_counter()
    losses = fisher_curves(model, groups, images, FRACTIONS, progress=progress)
    curves = SensitivityCurves(FRACTIONS, losses, time.perf_counter() - t, how="fisher")
    evaluator.passes += (1 + 2 * FISHER_SAMPLES) * sum(int(x.shape[0]) for x in images) / evaluator.unit
    return curves


@torch.enable_grad()  # inside a caller's no_grad block too: the gates need their gradients
def fisher_curves(
    model: nn.Module,
    groups: Sequence[Tuple[GroupInfo, List[Tuple[str, List[int]]]]],
    images: Sequence[torch.Tensor],
    fractions: Sequence[float],
    samples: int = FISHER_SAMPLES,
    seed: int = 0,
    progress: bool = False,
) -> Dict[str, List[float]]:
    """Per group root, the predicted KL divergence with each of ``fractions``
    of its lowest-valued channels masked.  ``groups``: ``(info, [(module
    name, its channel of each group position)])`` as the masked evaluator
    takes them; ``images``: batches.  The model runs in eval mode; its
    parameters are not touched (gradients go to the gates only)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    orders = {info.root: torch.as_tensor(lowest_first(info), dtype=torch.long) for info, _ in groups}
    squares: Dict[str, torch.Tensor] = {}  # per group: sum over images and draws of each prefix's squared sum
    count = 0
    batches = images
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(images, desc="predicted curves", unit="batch")
    try:
        for x in (chunk for batch in batches for chunk in batch.split(CHUNK)):
            logp, gates = _gated_forward(model, modules, groups, x.to(device))
            draws = torch.multinomial(logp.detach().exp().cpu(), samples, replacement=True, generator=generator)
            draws = draws.to(logp.device)
            tensors = list(gates.values())
            for k in range(samples):
                picked = logp.gather(1, draws[:, k : k + 1]).sum()
                grads = torch.autograd.grad(picked, tensors, retain_graph=k < samples - 1)
                for root, grad in zip(gates, grads):
                    prefix = grad.double()[:, orders[root].to(grad.device)].cumsum(1)  # lowest first
                    total = (prefix**2).sum(0).cpu()
                    squares[root] = total if root not in squares else squares[root] + total
            count += int(x.shape[0]) * samples
    finally:
        model.train(was_training)
    out = {}
    for info, _ in groups:
        per = info.width // info.blocks
        predicted = squares[info.root] / (2 * count)  # removing the first k positions: entry k - 1
        counts = [int(round(f * per)) for f in fractions]
        out[info.root] = [0.0 if c == 0 else float(predicted[c - 1]) for c in counts]
    return out


def _gated_forward(model: nn.Module, modules: Dict[str, nn.Module], groups, x: torch.Tensor):
    """The model's log-probabilities on ``x`` with a gate of ones per image
    and group position on every layer that outputs the group's channels,
    and the gates (by group root)."""
    gates: Dict[str, torch.Tensor] = {}
    hooks = []
    try:
        for info, outputs in groups:
            per = info.width // info.blocks
            gate = torch.ones(x.shape[0], per, device=x.device, requires_grad=True)
            gates[info.root] = gate
            for name, chans in outputs:
                hooks.append(modules[name].register_forward_hook(_gating(gate, chans, per)))
        logp = torch.log_softmax(model(x), 1)
    finally:
        for h in hooks:
            h.remove()
    return logp, gates


def _gating(gate: torch.Tensor, chans: Sequence[int], per: int):
    """A forward hook scaling the layer's output channels of the group by
    their gates (a grouped layer repeats a block's positions)."""
    index = torch.as_tensor(list(chans), dtype=torch.long, device=gate.device)
    position = torch.arange(len(chans), device=gate.device) % per

    def hook(module, inputs, output):
        scale = torch.ones(output.shape[0], output.shape[1], dtype=output.dtype, device=output.device)
        scale = scale.index_copy(1, index, gate[:, position].to(output.dtype))
        return output * scale.view(*scale.shape, *([1] * (output.dim() - 2)))

    return hook
