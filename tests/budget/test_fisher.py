"""The predicted curves (``budget.fisher``) against the KL divergence they
predict: a move of a group's gates a small step towards masking costs the
step squared times the prediction for the whole move (the expansion's second
order), on every group, coupled and grouped ones included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.budget.fisher import fisher_curves
from ocnna_fast.budget.masking import expand, lowest_first
from ocnna_fast.budget.search import budget_groups
from ocnna_fast.budget.sensitivity import group_outputs
from ocnna_fast.selection.groups import conv_groups


class Plain(nn.Module):
    def __init__(self, a: int = 8, b: int = 12):
        super().__init__()
        self.a, self.an = nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a)
        self.b, self.bn = nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b)
        self.head = nn.Linear(b, 5)

    def forward(self, x):
        x = self.an(self.a(x)).relu()
        x = self.bn(self.b(x)).relu()
        return self.head(x.mean((2, 3)))


class Grouped(nn.Module):
    """A grouped conv (its channels in blocks) and a residual add (two layers output one group)."""

    def __init__(self):
        super().__init__()
        self.a, self.an = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.c = nn.Conv2d(12, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.an(self.a(x)).relu()
        x = self.b(x).relu() + x
        return self.head(self.c(x).relu().mean((2, 3)))


def _groups(model, x, seed):
    rng = np.random.default_rng(seed)
    _, _, _, groups = conv_groups(model, x[:1])
    values = {root: rng.random(len(g[0].idxs)) for root, g in groups}
    _, dg, names, found = budget_groups(model, x[:1], [], values)
    return [(info, group_outputs(g, dg, names)) for g, info in found]


def _kl_scaled(model, info, outputs, x, removed: int, step: float) -> float:
    """The mean KL divergence from the model's predictions with the
    ``removed`` lowest positions of the group scaled by ``1 - step``."""
    modules = dict(model.named_modules())
    positions = set(expand(lowest_first(info)[:removed], info))
    hooks = []
    for name, chans in outputs:
        idx = torch.as_tensor([c for p, c in enumerate(chans) if p in positions])

        def hook(module, inputs, out, idx=idx):
            out = out.clone()
            out[:, idx] *= 1 - step
            return out

        hooks.append(modules[name].register_forward_hook(hook))
    with torch.no_grad():
        try:
            moved = torch.log_softmax(model(x).double(), 1)
        finally:
            for h in hooks:
                h.remove()
        base = torch.log_softmax(model(x).double(), 1)
    return float((base.exp() * (base - moved)).sum(1).mean())


@pytest.mark.parametrize("arch", [Plain, Grouped])
def test_the_prediction_is_the_kl_divergence_to_second_order(arch):
    torch.manual_seed(0)
    model = arch().eval()
    with torch.no_grad():  # BatchNorm statistics other than the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(24, 3, 8, 8)
    groups = _groups(model, x, 0)
    assert groups and any(info.blocks > 1 for info, _ in groups) == (arch is Grouped)
    fractions = (0.25, 0.5, 1.0)
    predicted = fisher_curves(model, groups, [x[:12], x[12:]], fractions, samples=100)
    step = 1e-2
    for info, outputs in groups:
        per = info.width // info.blocks
        for f, p in zip(fractions, predicted[info.root]):
            actual = _kl_scaled(model, info, outputs, x, int(round(f * per)), step)
            assert p > 0 and actual > 0
            assert actual / step**2 == pytest.approx(p, rel=0.1), (info.root, f)


def test_the_model_is_left_as_it_was():
    torch.manual_seed(1)
    model = Plain().train()
    x = torch.randn(16, 3, 8, 8)
    groups = _groups(model, x, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # as evaluation code often calls it
        got = fisher_curves(model, groups, [x], (0.0, 0.5, 1.0), samples=8)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    for info, _ in groups:
        assert got[info.root][0] == 0.0 and min(got[info.root][1:]) > 0
    with pytest.raises(ValueError, match="samples"):
        fisher_curves(model, groups, [x], (0.5,), samples=0)


@pytest.mark.parametrize("search", ["one-pass", "full"])
def test_the_search_with_predicted_curves_measures_only_its_caps_and_moves(search):
    """Its curves cost one forward and one backward pass over the evaluation
    images (counted as three forward ones), and it reports them as predicted."""
    from ocnna_fast.budget.fisher import FISHER_SAMPLES
    from ocnna_fast.budget.search import prune_to_budget

    torch.manual_seed(2)
    model = Plain(32, 48).eval()
    x = torch.randn(48, 3, 8, 8)
    values = {root: np.random.default_rng(0).random(len(g[0].idxs)) for root, g in conv_groups(model, x[:1])[3]}
    kw = dict(allocation="sensitivity", calibration=[x[:24]], evaluation=[x[24:36], x[36:]], search=search)
    got = prune_to_budget(model, values, x[:1], "macs=0.6", curves="fisher", refine_steps=0, cap_search=False, **kw)
    s = got.sensitivity
    assert s["curves"] == "fisher" and s["evaluations"] == 1  # the unmasked model alone: no curve candidate
    assert s["stage_passes"]["curves"] == pytest.approx((1 + 2 * FISHER_SAMPLES) * 24 / s["pass_images"])
    assert all(v[0] == 0.0 and max(v) > 0 for v in s["losses"].values())
    assert abs(got.reached - 0.6) <= 0.6 * 0.02
    from ocnna_fast.cli.output import _search_cost

    assert "loss curves (fisher, predicted)" in _search_cost(s)[-1]  # report.md says so
    measured = prune_to_budget(model, values, x[:1], "macs=0.6", refine_steps=0, cap_search=False, **kw)
    assert measured.sensitivity["curves"] == "measured" and measured.sensitivity["evaluations"] > 0
