"""Selection and surgery: plans, RPR, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import fake_scores
from torch import nn

from ocnna_fast.models import ARCHS, build, input_size
from ocnna_fast.scoring.scores import LayerScores
from ocnna_fast.selection.rules import select_channels
from ocnna_fast.surgery.plans import apply_plan, load_pruned, save_pruned
from ocnna_fast.surgery.prune import count_params, prune


def layer_widths(model):
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_surgery_on_every_zoo_model(arch):
    model = build(arch).eval()
    size = 32 if input_size(arch) == 32 else 64  # torchvision models take any size; keep the test fast
    x = torch.randn(2, 3, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, plan = prune(model, fake_scores(model), 40, x[:1])
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 10)
    # plan's channel counts are the pruned model's
    for name, w in plan["layers_after"].items():
        m = dict(pruned.named_modules())[name]
        got = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        assert got == (w["in"], w["out"]), name
    assert count_params(pruned) < count_params(model)
    # the classifier (a Linear, or a conv in the TF MobileNets) keeps all its outputs
    last = [m for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    assert (last.out_features if isinstance(last, nn.Linear) else last.out_channels) == 10
    json.dumps(plan)  # JSON-serialisable


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def scores_from(values):
    out = {}
    for name, v in values.items():
        s = torch.tensor(v, dtype=torch.float64)
        out[name] = LayerScores(
            score=s, mean=torch.ones_like(s), std=s, count=1, dead=torch.zeros(len(v), dtype=torch.bool)
        )
    return out


def test_rpr_and_kept_filters_by_hand():
    model = TwoConv().eval()
    sa = [0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.3, 0.6]  # 50th percentile 0.55: keep 0, 3, 5, 7
    sb = [0.4, 0.1, 0.3, 0.2]  # 50th percentile 0.25: keep 0, 2
    pruned, plan = prune(model, scores_from({"a": sa, "b": sb}), 50, torch.randn(1, 3, 8, 8))
    assert plan["kept"] == {"a": [0, 3, 5, 7], "b": [0, 2]}
    # parameters by hand: a 4x3x3x3+4, b 2x4x3x3+2, fc 2x2+2
    assert count_params(pruned) == (4 * 27 + 4) + (2 * 4 * 9 + 2) + (2 * 2 + 2)
    assert count_params(model) == (8 * 27 + 8) + (4 * 8 * 9 + 4) + (2 * 4 + 2)
    # the kept filters are the original ones, unchanged
    assert torch.equal(pruned.a.weight, model.a.weight[[0, 3, 5, 7]])
    assert torch.equal(pruned.b.weight, model.b.weight[[0, 2]][:, [0, 3, 5, 7]])


def test_select_channels_rule():
    s = np.array([0.3, 0.1, 0.2, 0.4, 0.5])
    assert select_channels(s, 0).tolist() == [0, 1, 2, 3, 4]
    assert select_channels(s, 40).tolist() == [0, 3, 4]  # percentile 40 = 0.26
    # ties keep the count distinct values would (4 - ceil(0.99 * 3) = 1), the lowest index first
    assert select_channels(np.zeros(4), 99).tolist() == [0]
    assert select_channels(np.array([1.0]), 99.9).tolist() == [0]


def test_k_zero_is_numerically_identical():
    model = build("resnet20").eval()
    x = torch.randn(3, 3, 32, 32)
    pruned, plan = prune(model, fake_scores(model), 0, x[:1])
    assert all(not g["removed"] for g in plan["groups"])
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize("k", [-1, 100, 150, float("nan"), "40"])
def test_k_outside_range(k):
    model = TwoConv()
    with pytest.raises(ValueError, match="percentile"):
        prune(model, fake_scores(model), k, torch.randn(1, 3, 8, 8))


def test_resnet50_k40_keeps_the_papers_parameter_share():
    """Paper: k=40 on ResNet-50/ImageNet leaves 37.44% of the parameters."""
    model = build("resnet50", num_classes=1000).eval()
    pruned, _ = prune(model, fake_scores(model, seed=1), 40, torch.randn(1, 3, 64, 64))
    rpr = count_params(pruned) / count_params(model)
    assert abs(rpr - 0.3744) <= 0.01, rpr


def test_save_load_round_trip_and_bad_files(tmp_path):
    model = build("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, plan = prune(model, fake_scores(model), 40, x[:1])
    d = save_pruned(tmp_path / "p", pruned, plan, extra={"arch": "resnet20", "num_classes": 10})
    loaded = load_pruned(d)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    # apply_plan on the base model gives the same architecture
    rebuilt = apply_plan(model, plan)
    assert layer_widths(rebuilt) == layer_widths(pruned)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    (bad / "plan.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_pruned(bad)
    (bad / "plan.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="plan"):
        load_pruned(bad, build("resnet20"))
    # a plan that does not fit the model
    doc = json.loads((d / "plan.json").read_text())
    doc["groups"][0]["channels"] += 1
    (bad / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError):
        load_pruned(bad)
    # weights of another pruning
    other, other_plan = prune(model, fake_scores(model, seed=5), 70, x[:1])
    (bad / "plan.json").write_text((d / "plan.json").read_text())
    save_pruned(tmp_path / "o", other, other_plan)
    (bad / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="sha256 differs"):
        load_pruned(bad)
    # truncated weights
    raw = (d / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="cannot read|sha256 differs"):
        load_pruned(bad)


def test_scores_must_fit_the_model():
    model = TwoConv()
    with pytest.raises(ValueError, match="does not have"):
        prune(model, scores_from({"nope": [1.0, 2.0]}), 40, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        prune(model, scores_from({"a": [1.0, 2.0]}), 40, torch.randn(1, 3, 8, 8))
