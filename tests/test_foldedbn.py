"""BatchNorm re-estimation on folded networks (``foldedbn``): on a folded copy
of a BatchNorm network it computes what re-estimating the BatchNorm of the
unfolded network computes, leaves an unpruned network as it was, and gives
each kept channel the unpruned network's output moments."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning")

from ocnna_fast.batchnorm import recalibrate_batchnorm  # noqa: E402
from ocnna_fast.budget import _groups  # noqa: E402
from ocnna_fast.compensation import compensate, recalibrate  # noqa: E402
from ocnna_fast.foldedbn import correct_folded, output_moments  # noqa: E402
from ocnna_fast.pruning import prune  # noqa: E402
from ocnna_fast.sensitivity import MaskedEvaluator, _kl, group_outputs  # noqa: E402


class Net(nn.Module):
    """conv-BN-ReLU6, pointwise, depthwise, pointwise, classifier (MobileNet's
    pattern); ``folded``: the same with biases and no BatchNorm."""

    def __init__(self, folded: bool = False) -> None:
        super().__init__()

        def conv(i, o, k, g=1):
            return nn.Conv2d(i, o, k, padding=k // 2, groups=g, bias=folded)

        def norm(c):
            return nn.Identity() if folded else nn.BatchNorm2d(c)

        self.c1, self.b1 = conv(3, 16, 3), norm(16)
        self.c2, self.b2 = conv(16, 24, 1), norm(24)
        self.dw, self.b3 = conv(24, 24, 3, 24), norm(24)
        self.c3, self.b4 = conv(24, 32, 1), norm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        for c, b in ((self.c1, self.b1), (self.c2, self.b2), (self.dw, self.b3), (self.c3, self.b4)):
            x = F.relu6(b(c(x)))
        return self.fc(x.mean((2, 3)))


PAIRS = (("c1", "b1"), ("c2", "b2"), ("dw", "b3"), ("c3", "b4"))


def _pair(seed=0):
    """A BatchNorm network with its statistics estimated on the calibration
    batches, and its folded copy."""
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        for _, b in PAIRS:
            bn = getattr(net, b)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    batches = [torch.randn(64, 3, 16, 16)]
    recalibrate_batchnorm(net, batches)
    folded = Net(folded=True).eval()
    with torch.no_grad():
        for c, b in PAIRS:
            conv, bn, out = getattr(net, c), getattr(net, b), getattr(folded, c)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            out.bias.copy_(bn.bias - bn.running_mean * scale)
        folded.fc.load_state_dict(net.fc.state_dict())
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
    return net, folded, batches


def _values(model, example):
    rng = np.random.default_rng(1)
    _, _, _, found = _groups(model, example, [], {n: None for n, _ in model.named_modules()})
    return {info.root: rng.random(info.width) for _, info in found}


def test_on_a_folded_copy_it_is_batchnorm_re_estimation_of_the_unfolded_network():
    net, folded, batches = _pair()
    example = torch.zeros(1, 3, 16, 16)
    values = _values(net, example)
    assert set(values) == set(_values(folded, example))
    net_p, net_plan = prune(net, None, 40, example, [], importance=values)
    folded_p, plan = prune(folded, None, 40, example, [], importance=values)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        before = net_p(x)
    recalibrate_batchnorm(net_p, batches)
    compensate(net_p, net, net_plan, batches)  # the classifier has no BatchNorm: both compensate its bias
    info = recalibrate(folded_p, folded, plan, iter(batches), folded="variance")
    assert info["method"] == "folded-batchnorm" and info["corrected"] == 4 and info["images"] == 64
    with torch.no_grad():
        theirs, ours = net_p(x), folded_p(x)
    assert (theirs - before).abs().max() > 0.05  # the re-estimation changes the network, and both agree
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_an_unpruned_network_is_left_as_it_was_and_kept_channels_get_the_base_moments():
    _, folded, batches = _pair()
    same = copy.deepcopy(folded)
    correct_folded(same, folded, {}, batches)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x), folded(x), rtol=1e-3, atol=1e-3)
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, 50, example, [], importance=_values(folded, example))
    correct_folded(pruned, folded, plan, batches)
    convs = [n for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)]
    base = output_moments(folded, batches, convs)
    after = output_moments(pruned, batches, convs)
    for name in convs:
        kept = plan["kept_outputs"].get(name, range(base[name][0].numel()))
        idx = torch.as_tensor(list(kept))
        torch.testing.assert_close(after[name][0], base[name][0][idx], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(after[name][1], base[name][1][idx], rtol=1e-3, atol=1e-3)


def test_mean_only_compensation_stays_selectable_and_bad_choices_are_refused():
    _, folded, batches = _pair()
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, 40, example, [], importance=_values(folded, example))
    assert recalibrate(copy.deepcopy(pruned), folded, plan, batches, folded="mean")["method"] == "bias-compensation"
    with pytest.raises(ValueError, match="variance"):
        recalibrate(pruned, folded, plan, batches, folded="both")


def test_the_sensitivity_evaluator_of_a_folded_network_masks_as_correction_after_removal_does():
    _, folded, batches = _pair()
    example = torch.zeros(1, 3, 16, 16)
    work, dg, names, found = _groups(folded, example, [], _values(folded, example))
    groups = [(info, group_outputs(g, dg, names)) for g, info in found]
    evaluation = [torch.randn(32, 3, 16, 16)]
    ev = MaskedEvaluator(folded, groups, batches, evaluation)
    assert ev.has_bn  # the norms put back: each candidate is re-estimated
    info = next(i for _, i in found if i.root == "dw")
    masked = ev.loss({"dw": 12}) + ev.offset
    keep = {i.root: i.width for _, i in found}
    keep["dw"] = info.width - 12
    pruned, plan = prune(folded, None, None, example, [], importance=_values(folded, example), keep=keep)
    correct_folded(pruned, folded, plan, batches)
    with torch.no_grad():
        reference = [F.log_softmax(folded(x), 1) for x in evaluation]
    removed = _kl(pruned, evaluation, reference)
    assert masked == pytest.approx(removed, rel=1e-2, abs=1e-4)
