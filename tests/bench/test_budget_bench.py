"""The equal-cost suite (``bench --target``): Torch-Pruning's global pruning
rebuilt exactly, every method at the budget, targets and methods parsed,
and a stopped suite resumed to the same rows."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from ocnna_fast.bench.equal_cost import _group_roots, parse_method, parse_targets, run_budget_suite, tp_global_keep
from ocnna_fast.budget.allocation import Target, macs_and_params
from ocnna_fast.cli import main
from ocnna_fast.data.tensorimages import TensorImages
from ocnna_fast.job.pipeline import JobData, JobSettings
from ocnna_fast.models import build
from ocnna_fast.surgery.prune import prune


def _resnet20(seed=0):
    torch.manual_seed(seed)
    m = build("resnet20").eval()
    with torch.no_grad():  # distinct BatchNorm statistics, so that masks and widths matter
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def test_tp_global_widths_are_rebuilt_into_torch_prunings_own_model():
    model = _resnet20()
    example = torch.zeros(1, 3, 32, 32)
    keep, share = tp_global_keep(model, example, [], Target("macs", 0.5))
    # Torch-Pruning's own result at that ratio, pruned by its API alone
    theirs = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        theirs,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=share,
        max_pruning_ratio=0.9,
        ignored_layers=[theirs.linear],
        root_module_types=[nn.Conv2d],
        customized_pruners=theirs.ocnna_pruners(),
    )
    pruner.step()
    roots = _group_roots(model, example, [])
    ours, _ = prune(
        model,
        None,
        None,
        example,
        [],
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        keep={r: keep[r] for r in roots},
    )
    assert macs_and_params(ours, 32) == macs_and_params(theirs, 32)
    assert 0.49 <= macs_and_params(ours, 32)[0] / macs_and_params(model, 32)[0] <= 0.51
    widths = {n: m.out_channels for n, m in theirs.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths == {n: m.out_channels for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(set(widths.values())) > 3  # a global ranking gives groups different widths
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the same channels kept: the same function
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "items, expected",
    [
        (["macs=0.5", "0.3"], ["macs=0.5", "macs=0.3"]),
        (["params=0.4", "macs=0.6", "0.2"], ["params=0.4", "macs=0.6", "macs=0.2"]),
    ],
)
def test_targets_take_the_kind_before_them(items, expected):
    assert parse_targets(items) == expected


@pytest.mark.parametrize(
    "items, message",
    [
        (["0.5"], "needs a kind"),
        (["macs=0.5", "0.5"], "more than once"),
        (["macs=1.5"], None),
        (["latency=0.5"], "MACs or parameter"),
        (["flops=0.5"], None),
    ],
)
def test_bad_targets_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_targets(items)


@pytest.mark.parametrize(
    "name, message",
    [
        ("uniform", "criterion"),
        ("tp-global:l1", "without a criterion"),
        ("greedy:l1", "unknown"),
        ("sensitivity-caps:l1", r"now written sensitivity:l1,refine-steps=0"),
        ("sensitivity:l1,refine-steps=x", "not an integer"),
        ("global:l1,no-cap-search", "only the sensitivity allocation"),
        ("sensitivity:l1,fast", "unknown flag"),
    ],
)
def test_bad_methods_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        parse_method(name)


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    s = TensorImages(x, y, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return JobData(evaluation=s, scoring=s, calibration=s)


UNCAPPED = "sensitivity:l1,no-cap-search,refine-steps=0"
METHODS = ["uniform:l1", "uniform-inner:l1", "tp-global", "global:l1", UNCAPPED, "sensitivity:l1,refine-steps=0"]


def _suite(model, out, methods=METHODS, log=lambda *_: None, **kw):
    return run_budget_suite(
        model,
        _data(),
        JobSettings(batch_size=16, sensitivity_images=16),
        methods=methods,
        targets=["macs=0.5"],
        seeds=[0],
        out=out,
        ignored_for=lambda scope: list(model.ocnna_ignored_layers(scope)),
        config={"arch": "resnet20"},
        progress=False,
        log=log,
        **kw,
    )


def test_every_method_meets_the_budget_and_a_stopped_suite_resumes_to_the_same_rows(tmp_path, monkeypatch):
    model = _resnet20()
    rows = _suite(model, tmp_path / "a")
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        assert 0.5 * 0.98 <= r["reached"] <= 0.5 * 1.02, r
        assert abs(r["macs_ratio"] - r["reached"]) < 1e-9  # the job's own count agrees
        assert r["acc_bn"] is not None and r["acc_finetuned"] is None
        # the search's cost in forward-pass equivalents: only the sensitivity search runs images
        assert (r["search_passes"] > 1.0) == r["method"].startswith("sensitivity"), r
    assert "| search passes |" in (tmp_path / "a" / "results.md").read_text()
    # stop after two cells: the rerun runs only the rest and ends with the same rows
    from ocnna_fast.bench import equal_cost as budget_bench

    real, calls = budget_bench._Cells.cell, []

    def stopping(self, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(budget_bench._Cells, "cell", stopping)
    with pytest.raises(KeyboardInterrupt):
        _suite(model, tmp_path / "b")
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())["rows"]) == 2
    monkeypatch.setattr(budget_bench._Cells, "cell", real)
    again = _suite(model, tmp_path / "b")
    strip = [{k: v for k, v in r.items() if k != "allocation_seconds"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "allocation_seconds"} for r in again] == strip
    assert "| macs=0.5 | tp-global |" in (tmp_path / "b" / "results.md").read_text()


def test_each_sensitivity_method_asks_for_its_searches(tmp_path, monkeypatch):
    """A method's flags reach the job as prune's flags would."""
    from ocnna_fast.job.pipeline import PruneJob

    asked, real = [], PruneJob.allocate

    def spy(self):
        asked.append((self.settings.allocation, self.settings.cap_search, self.settings.refine_steps))
        return real(self)

    monkeypatch.setattr(PruneJob, "allocate", spy)
    methods = ["global:l1", UNCAPPED, "sensitivity:l1,refine-steps=0", "sensitivity:l1,refine-steps=3"]
    rows = _suite(_resnet20(), tmp_path, methods=methods)
    assert [r["method"] for r in rows] == methods
    assert [a[0] for a in asked] == ["global", "sensitivity", "sensitivity", "sensitivity"]
    assert asked[1:] == [("sensitivity", False, 0), ("sensitivity", True, 0), ("sensitivity", True, 3)]


def test_results_of_the_first_schema_resume_under_todays_method_names(tmp_path):
    """A results.json written before method strings took prune's flags: its
    sensitivity rows are read under the names that mean what they meant, so
    a rerun with today's names resumes instead of running them again."""
    from ocnna_fast.bench.results_file import SCHEMA, _digest

    methods = [UNCAPPED, "sensitivity:l1,refine-steps=0"]
    rows = _suite(_resnet20(), tmp_path, methods=methods)
    path = tmp_path / "results.json"
    doc = json.loads(path.read_text())
    old_names = ["sensitivity:l1", "sensitivity-caps:l1"]
    for row, name in zip(doc["rows"], old_names):
        row.pop("row_sha256")
        row["method"] = name
        row["row_sha256"] = _digest(row)
    del doc["schema"]
    path.write_text(json.dumps(doc))
    logged = []
    again = _suite(_resnet20(), tmp_path, methods=methods, log=logged.append)
    assert [r["method"] for r in again] == methods
    assert [r["acc_bn"] for r in again] == [r["acc_bn"] for r in rows]
    assert logged and "0 cells to run" in logged[0]
    assert json.loads(path.read_text())["schema"] == SCHEMA
    doc["schema"] = SCHEMA + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="results schema"):
        _suite(_resnet20(), tmp_path, methods=methods)


def test_a_suite_of_other_settings_is_not_resumed(tmp_path):
    model = _resnet20()
    _suite(model, tmp_path, methods=["uniform:l1"])
    with pytest.raises(ValueError, match="--max-prune"):
        run_budget_suite(
            model,
            _data(),
            JobSettings(batch_size=16, max_prune=0.5),
            methods=["uniform:l1"],
            targets=["macs=0.5"],
            seeds=[0],
            out=tmp_path,
            ignored_for=lambda scope: [],
            config={"arch": "resnet20"},
            progress=False,
            log=lambda *_: None,
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "tp-global"], "give --target too"),
        (["--target", "macs=0.5", "--k", "40"], "--k and --criteria"),
        (["--target", "macs=0.5", "--methods", "tp-global", "tp-global"], "more than once"),
        (["--target", "macs=0.5", "--methods", "uniform"], "criterion"),
        (["--target", "macs=0.5", "--scope", "inner"], "each method names its scope"),
        (["--target", "latency=0.5"], "MACs or parameter budgets"),
    ],
)
def test_bench_refuses_mixed_or_bad_axes_before_loading(argv, message, tmp_path, capsys):
    rc = main(["bench", "--arch", "resnet20", "--out", str(tmp_path / "x"), *argv])
    assert rc != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
