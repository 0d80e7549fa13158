"""BatchNorm re-estimation on folded networks (``foldedbn``): on a folded copy
of a BatchNorm network it computes what re-estimating the BatchNorm of the
unfolded network computes, leaves an unpruned network as it was, and gives
each kept channel the unpruned network's output moments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import folded_pair, random_values
from torch import nn

from ocnna_fast.budget.evaluator import MaskedEvaluator
from ocnna_fast.budget.masking import mean_kl
from ocnna_fast.budget.search import budget_groups
from ocnna_fast.budget.sensitivity import group_outputs
from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm
from ocnna_fast.recovery.compensation import compensate
from ocnna_fast.recovery.foldedbn import correct_folded, output_moments
from ocnna_fast.recovery.recover import recalibrate
from ocnna_fast.surgery.prune import prune


def test_on_a_folded_copy_it_is_batchnorm_re_estimation_of_the_unfolded_network():
    net, folded, batches = folded_pair()
    example = torch.zeros(1, 3, 16, 16)
    values = random_values(net, example)
    assert set(values) == set(random_values(folded, example))
    net_p, net_plan = prune(net, None, 40, example, [], importance=values)
    folded_p, plan = prune(folded, None, 40, example, [], importance=values)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        before = net_p(x)
    recalibrate_batchnorm(net_p, batches)
    compensate(net_p, net, net_plan, batches)  # the classifier has no BatchNorm: both compensate its bias
    info = recalibrate(folded_p, folded, plan, iter(batches), folded="variance")
    assert info["method"] == "folded-variance" and info["corrected"] == 4 and info["images"] == 64
    with torch.no_grad():
        theirs, ours = net_p(x), folded_p(x)
    assert (theirs - before).abs().max() > 0.05  # the re-estimation changes the network, and both agree
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_an_unpruned_network_is_left_as_it_was_and_kept_channels_get_the_base_moments():
    _, folded, batches = folded_pair()
    same = copy.deepcopy(folded)
    correct_folded(same, folded, {}, batches)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x), folded(x), rtol=1e-3, atol=1e-3)
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, 50, example, [], importance=random_values(folded, example))
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
    _, folded, batches = folded_pair()
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, 40, example, [], importance=random_values(folded, example))
    assert recalibrate(copy.deepcopy(pruned), folded, plan, batches, folded="mean")["method"] == "folded-mean"
    with pytest.raises(ValueError, match="variance"):
        recalibrate(pruned, folded, plan, batches, folded="both")


def test_the_sensitivity_evaluator_of_a_folded_network_masks_as_correction_after_removal_does():
    _, folded, batches = folded_pair()
    example = torch.zeros(1, 3, 16, 16)
    work, dg, names, found = budget_groups(folded, example, [], random_values(folded, example))
    groups = [(info, group_outputs(g, dg, names)) for g, info in found]
    evaluation = [torch.randn(32, 3, 16, 16)]
    ev = MaskedEvaluator(folded, groups, batches, evaluation)
    assert ev.has_bn  # the norms put back: each candidate is re-estimated
    info = next(i for _, i in found if i.root == "dw")
    masked = ev.loss({"dw": 12}) + ev.offset
    keep = {i.root: i.width for _, i in found}
    keep["dw"] = info.width - 12
    pruned, plan = prune(folded, None, None, example, [], importance=random_values(folded, example), keep=keep)
    correct_folded(pruned, folded, plan, batches)
    with torch.no_grad():
        reference = [F.log_softmax(folded(x), 1) for x in evaluation]
    removed = mean_kl(pruned, evaluation, reference)
    assert masked == pytest.approx(removed, rel=1e-2, abs=1e-4)
