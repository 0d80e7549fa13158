"""The benchmark suite: identical structure across criteria, resumable cells, the result schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast import count_params, prune, score
from ocnna_fast.bench.equal_structure import run_suite
from ocnna_fast.bench.tables import RESULT_KEYS
from ocnna_fast.job.pipeline import JobData, JobSettings
from ocnna_fast.models import build
from ocnna_fast.recovery.distill import TensorImages
from ocnna_fast.selection.criteria import CRITERIA, Context, criterion_values
from ocnna_fast.selection.rules import kept_count, select_channels, select_top


@pytest.mark.parametrize("seed", range(5))
def test_count_rule_keeps_what_the_percentile_rule_keeps_on_distinct_values(seed):
    rng = np.random.default_rng(seed)
    for width in range(1, 70):
        for k in (0, 12.5, 20, 40, 50, 60, 75, 99):
            v = rng.random(width)
            assert np.array_equal(select_top(v, kept_count(width, k)), select_channels(v, k)), (width, k)


def test_count_rule_is_blind_to_ties():
    """All-equal values keep exactly as many as distinct values would, lowest
    indices first, under both rules (a threshold test kept all ten)."""
    v = np.zeros(10)
    assert select_channels(v, 40).tolist() == select_top(v, kept_count(10, 40)).tolist() == [0, 1, 2, 3, 4, 5]


class Res(nn.Module):
    """A residual add couples a and c: one group of two convs.  b is square
    (8 -> 8), so c's *input* channels, which b's group holds, are as many as
    b's outputs: a criterion must not count c's scores in b's group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        for bn in (self.bn_a, self.bn_b, self.bn_c):  # distinct scales, so bn-scale has something to rank
            nn.init.uniform_(bn.weight, 0.5, 1.5)

    def forward(self, x):
        a = torch.relu(self.bn_a(self.a(x)))
        return self.fc((a + self.bn_c(self.c(torch.relu(self.bn_b(self.b(a)))))).mean((2, 3)))


def _ctx(model, n=12):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 3, 8, 8, generator=g) for _ in range(n // 6)]
    ys = [torch.randint(0, 3, (6,), generator=g) for _ in xs]
    return Context(model, xs, ys, torch.zeros(1, 3, 8, 8), [])


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_gives_the_same_structure(criterion):
    torch.manual_seed(0)
    model = Res().eval()
    ref, _ = prune(model, score(model, _ctx(model).batches, progress=False), 50, torch.zeros(1, 3, 8, 8), rule="count")
    values = criterion_values(criterion, _ctx(model))
    assert set(values) == {"b", "c"}  # group roots: c (coupled with a by the add) and b
    pruned, plan = prune(model, None, 50, torch.zeros(1, 3, 8, 8), importance=values, rule="count")
    assert count_params(pruned) == count_params(ref)
    assert sorted((g["root"], len(g["removed"])) for g in plan["groups"]) == [("b", 4), ("c", 4)]


def test_importance_values_decide_the_channels():
    model = Res().eval()
    values = {"c": np.arange(8.0), "b": -np.arange(8.0)}
    _, plan = prune(model, None, 50, torch.zeros(1, 3, 8, 8), importance=values, rule="count")
    removed = {g["root"]: g["removed"] for g in plan["groups"]}
    assert removed == {"c": [0, 1, 2, 3], "b": [4, 5, 6, 7]}
    with pytest.raises(ValueError, match="values for group"):
        prune(model, None, 50, torch.zeros(1, 3, 8, 8), importance={"c": np.ones(3), "b": np.ones(8)})


def _sets(data_dir, n):
    from ocnna_fast.data import local as data
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    x, y = data.cifar10_jpeg("train", data_dir, limit=n, seed=1)
    return TensorImages(x, y, CIFAR_MEAN, CIFAR_STD)


def test_suite_resumes_and_writes_the_schema(tmp_path, data_dir):
    from ocnna_fast.models import load_weights

    model = load_weights(build("resnet20"), data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th").eval()
    data = JobData(evaluation=_sets(data_dir, 40), scoring=_sets(data_dir, 40), calibration=_sets(data_dir, 40))
    kw = dict(ks=[40], seeds=[0, 1], out=tmp_path, progress=False, latency_repeats=1, config={"arch": "resnet20"})
    rows = run_suite(model, data, JobSettings(), criteria=["ocnna"], log=lambda *_: None, **kw)
    assert len(rows) == 1  # deterministic: first seed only without fine-tuning
    rows = run_suite(model, data, JobSettings(), criteria=["ocnna", "random"], log=lambda *_: None, **kw)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [(r["criterion"], r["seed"]) for r in doc["rows"]] == [("ocnna", 0), ("random", 0), ("random", 1)]
    for r in doc["rows"]:
        assert set(RESULT_KEYS) <= set(r) and r["acc_finetuned"] is None
        assert r["rpr"] == doc["rows"][0]["rpr"] and 0.25 < r["rpr"] < 0.55  # stage widths pruned too
    assert "| 40 | random | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy_vs_rpr.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="other settings"):
        uncalibrated = JobData(evaluation=data.evaluation, scoring=data.scoring)
        run_suite(model, uncalibrated, JobSettings(), criteria=["ocnna"], log=lambda *_: None, **kw)


@pytest.mark.parametrize("criterion", ["ocnna", "mean-energy", "ocnna-rms"])
def test_family_criteria_rank_as_prune_does(criterion):
    """The suite's OCNNA-family values are exactly what prune(criterion=...)
    ranks by, coupled groups included; OCNNAImportance agrees too."""
    import torch_pruning as tp

    from ocnna_fast.integrations.torch_pruning import OCNNAImportance

    torch.manual_seed(0)
    model = Res().eval()
    ctx = _ctx(model)
    s = score(model, ctx.batches, progress=False)
    _, own = prune(model, s, 50, ctx.example_inputs, rule="count", criterion=criterion)
    _, via = prune(model, None, 50, ctx.example_inputs, rule="count", importance=criterion_values(criterion, ctx))
    assert own["groups"] == via["groups"]
    imp = OCNNAImportance(s, model=model, criterion=criterion)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=ctx.example_inputs)
    values = criterion_values(criterion, ctx)
    for group in dg.get_all_groups(root_module_types=[nn.Conv2d]):
        root = {m: n for n, m in model.named_modules()}[group[0][0].target.module]
        np.testing.assert_allclose(imp(group).numpy(), values[root], rtol=1e-6)


def test_rms_is_sqrt_of_mean_square_energy():
    from ocnna_fast import FilterStats
    from ocnna_fast.selection.rules import layer_values

    x = torch.relu(torch.randn(9, 4, 6, 7, dtype=torch.float64))
    ls = FilterStats(4).update(x).result()
    f = np.sqrt(((x - x.mean(2, keepdim=True)) ** 2).sum((2, 3)).numpy())  # F with n_components=None
    np.testing.assert_allclose(layer_values(ls, "ocnna-rms"), np.sqrt((f**2).mean(0)), rtol=1e-12)
    with pytest.raises(ValueError, match="criterion"):
        layer_values(ls, "median")
