"""CIFAR ResNets: stage widths are prunable through the option-A shortcut
(ChannelMapShortcut + its Torch-Pruning pruning function)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ocnna_fast import count_params, load_pruned, prune, save_pruned, score
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import ChannelMapShortcut
from ocnna_fast.selection.groups import dependency_graph

EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def r20(data_dir):
    return load_weights(build("resnet20"), data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th").eval()


def test_the_channel_map_is_the_zero_padding_bit_for_bit():
    x = torch.randn(3, 16, 8, 8)
    got = ChannelMapShortcut(16, 32)(x)
    want = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(got, want)


def test_k0_is_bit_identical(r20):
    x = torch.randn(4, 3, 32, 32)
    pruned, plan = prune(r20, score(r20, [x], progress=False), 0, EXAMPLE)
    assert all(not g["removed"] for g in plan["groups"])
    with torch.no_grad():
        assert torch.equal(pruned(x), r20(x))


def _values(model, seed):
    """Random per-group values keyed by root, for every group prune ranks."""
    rng = np.random.default_rng(seed)
    dg = dependency_graph(model, EXAMPLE)
    names = {m: n for n, m in model.named_modules()}
    return {
        names[g[0][0].target.module]: rng.random(len(g[0][1])) for g in dg.get_all_groups(root_module_types=[nn.Conv2d])
    }


def _exact_zero_selection(model, seed):
    """Random values per group, except that a stage's width may only lose
    channels that are exactly zero once the channels chosen before are
    zeroed: those its shortcut fills with zero padding, or with a previous
    stage's channel that is itself removed.  (A channel the shortcut fills
    with a surviving signal is not zero, so removing it changes the output
    legitimately.)"""
    rng = np.random.default_rng(seed)
    values = _values(model, seed)
    gone_before = set()
    for root, width, shortcut in (
        ("conv1", 16, None),
        ("layer2.0.conv2", 32, model.layer2[0].shortcut),
        ("layer3.0.conv2", 64, model.layer3[0].shortcut),
    ):
        if shortcut is not None:
            src = shortcut.src.tolist()
            zero = np.array([s < 0 or s in gone_before for s in src])
            values[root] = np.where(zero, rng.random(width) * 0.5, 1 + rng.random(width))
        _, plan = prune(model, None, 40, EXAMPLE, importance=values, rule="count")
        gone_before = set(next(g["removed"] for g in plan["groups"] if g["root"] == root))
    return values


@pytest.mark.parametrize("seed", [0, 1])
def test_removing_zeroed_channels_keeps_the_outputs(r20, seed):
    """Zero every conv row and BatchNorm affine entry that writes the
    channels a selection removes (so those channels are exactly zero), then
    prune them away: stage widths included, the outputs must not move, so
    every shortcut still carries each surviving channel to the right place."""
    values = _exact_zero_selection(r20, seed)
    _, plan = prune(r20, None, 40, EXAMPLE, importance=values, rule="count")
    removed = {g["root"]: g["removed"] for g in plan["groups"]}
    assert removed["conv1"] and removed["layer2.0.conv2"] and removed["layer3.0.conv2"]  # stage widths too
    src2 = r20.layer2[0].shortcut.src.tolist()
    assert any(src2[j] in removed["conv1"] for j in removed["layer2.0.conv2"]) or seed  # a mapped channel goes
    zeroed = r20.__class__(3)  # same architecture (ResNet-20), same weights
    zeroed.load_state_dict(r20.state_dict())
    zeroed.eval()
    dg = dependency_graph(zeroed, EXAMPLE)
    names = {m: n for n, m in zeroed.named_modules()}
    with torch.no_grad():
        for group in dg.get_all_groups(root_module_types=[nn.Conv2d]):
            gone = removed.get(names[group[0][0].target.module], [])
            for dep, idxs in group:
                m = dep.target.module
                if not dg.is_out_channel_pruning_fn(dep.handler):
                    continue
                rows = [int(idxs[i]) for i in gone]
                if isinstance(m, nn.Conv2d):
                    m.weight[rows] = 0
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight[rows] = 0
                    m.bias[rows] = 0
    pruned, plan2 = prune(zeroed, None, 40, EXAMPLE, importance=values, rule="count")
    assert plan2["groups"] == plan["groups"]
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-4)
    assert pruned.layer3[0].shortcut.out_channels == pruned.layer3[0].conv2.out_channels


def test_a_wrong_shortcut_map_is_caught_by_the_zeroed_channel_check(r20, monkeypatch):
    """The check above can fail: with a pruner that forgets to renumber the
    map on input removal, the outputs move."""
    import importlib

    cifar_resnet = importlib.import_module("ocnna_fast.models.cifar_resnet")  # the module, not the builder
    real = cifar_resnet.shortcut_pruner

    class Broken(type(real())):
        def prune_in_channels(self, layer, idxs):  # drops inputs without renumbering the map
            layer.in_channels -= len(idxs)
            layer.src = layer.src.clamp(max=layer.in_channels - 1)
            return layer

    def broken():
        return Broken()

    monkeypatch.setattr(cifar_resnet, "shortcut_pruner", broken)
    with pytest.raises(AssertionError):
        test_removing_zeroed_channels_keeps_the_outputs(r20, 0)


def test_plan_round_trip_rebuilds_the_shortcut_maps(r20, tmp_path):
    x = torch.randn(4, 3, 32, 32)
    pruned, plan = prune(r20, score(r20, [x], progress=False), 40, EXAMPLE)
    save_pruned(tmp_path / "p", pruned, plan, extra={"arch": "resnet20"})
    again = load_pruned(tmp_path / "p")
    for a, b in zip(again.modules(), pruned.modules()):
        if isinstance(a, ChannelMapShortcut):
            assert torch.equal(a.src, b.src) and a.in_channels == b.in_channels
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def test_stage_widths_and_the_inner_only_option(r20):
    x = torch.randn(8, 3, 32, 32)
    s = score(r20, [x], progress=False)
    full, _ = prune(r20, s, 40, EXAMPLE)
    inner, _ = prune(r20, s, 40, EXAMPLE, ignored_layers=list(r20.ocnna_ignored_layers("inner")))
    rpr_full, rpr_inner = count_params(full) / count_params(r20), count_params(inner) / count_params(r20)
    assert 0.25 <= rpr_full <= 0.55
    assert 0.55 < rpr_inner < 0.65
    assert full.conv1.out_channels < 16 and inner.conv1.out_channels == 16
    assert inner.layer2[0].conv2.out_channels == 32
