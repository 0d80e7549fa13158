"""Latency targets: the side-by-side ratio (`LatencyRatio`) against a
clock the models themselves advance, the fit through MACs to a measured
ratio with fixed costs (reached within 5%, the figures of the model kept),
an unreachable latency named, and the command line end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.budget.allocation import macs_and_params
from ocnna_fast.budget.latency import LatencyRatio
from ocnna_fast.budget.search import LATENCY_TOLERANCE, budget_groups, prune_to_budget
from ocnna_fast.models import build


class Clock:
    """A fake ``perf_counter``: time moves only when a model runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costly(nn.Module):
    """A model whose forward passes take the milliseconds of ``ms`` in turn
    on the fake clock; every call is logged by name in ``log``."""

    def __init__(self, clock: Clock, name: str, ms, log) -> None:
        super().__init__()
        self.clock, self.name, self.ms, self.log = clock, name, list(ms), log

    def forward(self, x):
        self.clock.now += self.ms[len([n for n in self.log if n == self.name]) % len(self.ms)] / 1000.0
        self.log.append(self.name)
        return x.mean((2, 3))


def test_the_ratio_is_of_medians_timed_side_by_side(monkeypatch):
    from ocnna_fast.budget import latency as latency_budget

    monkeypatch.setattr(latency_budget, "BLOCKS", 4)
    clock, log = Clock(), []
    # 5 repeats in blocks of 2, 2, 1, each after 2 warm-up calls (slow); one timed call of each is disturbed
    base = Costly(clock, "base", [50, 50, 4, 4] + [50, 50, 4, 90] + [50, 50, 4], log)
    meter = LatencyRatio(base, 8, runtime="eager", batch=2, repeats=5, warmup=2, timer=clock)
    pruned = Costly(clock, "pruned", [30, 30, 1, 1] + [30, 30, 70, 1] + [30, 30, 1], log)
    assert meter(pruned) == pytest.approx(0.25)
    # the two alternate in blocks, each block with its own warm-up
    assert log == ["base"] * 4 + ["pruned"] * 4 + ["base"] * 4 + ["pruned"] * 4 + ["base"] * 3 + ["pruned"] * 3
    (m,) = meter.measurements
    assert (m["base_ms"], m["pruned_ms"], m["ratio"]) == pytest.approx((4.0, 1.0, 0.25))
    assert meter.describe()["candidates"] == 1 and meter.describe()["runtime"] == "eager"


@pytest.mark.parametrize("bad", [dict(runtime="tensorrt"), dict(batch=0), dict(batch=True), dict(repeats=0)])
def test_bad_latency_settings_are_refused(bad):
    """By the measure itself and by the job's settings, before any work (even without a latency target)."""
    from ocnna_fast.job.pipeline import JobSettings

    with pytest.raises(ValueError, match="latency runtime is one of|latency batch >= 1"):
        LatencyRatio(nn.Identity(), 8, **bad)
    if "repeats" not in bad:
        with pytest.raises(ValueError, match="latency runtime is one of|latency batch >= 1"):
            JobSettings(latency_runtime=bad.get("runtime", "eager"), latency_batch=bad.get("batch", 1))


class Fixed:
    """A measured ratio with fixed costs: 0.35 + 0.65 x the MACs ratio,
    the shape of a real runtime's latency, where a count-like rescaling
    alone converges slowly.  Records figures as ``LatencyRatio`` does."""

    def __init__(self, model, floor=0.35):
        self.base = macs_and_params(model, 32)[0]
        self.floor = floor
        self.measurements = []

    def __call__(self, pruned):
        ratio = self.floor + (1 - self.floor) * macs_and_params(pruned, 32)[0] / self.base
        self.measurements.append({"base_ms": 10.0, "pruned_ms": 10.0 * ratio, "ratio": ratio})
        return ratio

    def describe(self):
        return {"runtime": "fake", "batch": 1, "threads": 1, "repeats": 1, "candidates": len(self.measurements)}


def _setup():
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    _, _, _, found = budget_groups(model, x, [], {n: None for n, _ in model.named_modules()})
    rng = np.random.default_rng(0)
    return model, x, {info.root: rng.random(info.width) for _, info in found}


def test_a_latency_target_is_met_through_macs_within_five_percent():
    model, x, values = _setup()
    measure = Fixed(model)
    result = prune_to_budget(model, values, x, "latency=0.6", allocation="global", measure=measure)
    assert 0.6 * (1 - LATENCY_TOLERANCE) <= result.reached <= 0.6 * (1 + LATENCY_TOLERANCE)
    # the figures reported are the kept model's, not the last candidate's
    kept = result.plan["budget"]["measured"]
    assert kept["ratio"] == result.reached and kept["runtime"] == "fake"
    assert kept["pruned_ms"] == pytest.approx(10.0 * result.reached)
    assert result.rounds <= 4  # the secant, where rescaling alone would take more rounds
    with pytest.raises(ValueError, match="needs measure"):
        prune_to_budget(model, values, x, "latency=0.6", allocation="global")


def test_an_unreachable_latency_names_the_closest():
    model, x, values = _setup()
    with pytest.raises(ValueError, match=r"cannot meet latency=0.3 within 5%: the closest reached latency=0\.36"):
        prune_to_budget(model, values, x, "latency=0.3", allocation="global", measure=Fixed(model), max_prune=0.9)


def test_cli_prunes_to_a_measured_latency(tmp_path, data_dir, capsys):
    """Real timing in eager PyTorch: whatever the machine's noise, what is
    kept was measured at or below the target's ceiling, and the report
    shows those figures next to the target."""
    from ocnna_fast.cli import main

    out = tmp_path / "run"
    argv = ["prune", "--arch", "resnet20", "--target", "latency=0.8", "--allocation", "global"]
    argv += ["--latency-runtime", "eager", "--latency-batch", "8", "--score-images", "32", "--eval-images", "32"]
    argv += ["--bn-images", "0", "--finetune-epochs", "0", "--latency-repeats", "0"]
    argv += ["--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    measured = report["target_measured"]
    assert report["target"] == "latency=0.8" and report["reached"] <= 0.8 * (1 + LATENCY_TOLERANCE)
    assert measured["runtime"] == "eager" and measured["batch"] == 8
    assert measured["ratio"] == report["reached"] == pytest.approx(measured["pruned_ms"] / measured["base_ms"])
    assert report["macs_ratio"] < 1.0
    md = (out / "report.md").read_text()
    assert "Budget latency=0.8" in md and f"pruned {measured['pruned_ms']:.2f} ms" in md


def test_python_prune_takes_a_latency_target(monkeypatch):
    """``ocnna_fast.prune(target="latency=R")``: with a given measure, and by
    default measured in ONNX Runtime at batch 1 (what the kept model was
    measured at goes into the plan)."""
    import ocnna_fast
    from ocnna_fast.budget import entry as budget

    pytest.importorskip("onnxruntime")

    class Quick(LatencyRatio):  # the default measure, with fewer repeats: the test checks the route
        def __init__(self, *args, **kw):
            super().__init__(*args, repeats=5, warmup=1, **kw)

    monkeypatch.setattr(budget, "LatencyRatio", Quick)
    model, x, values = _setup()
    _, plan = ocnna_fast.prune(
        model,
        None,
        target="latency=0.7",
        example_inputs=x,
        importance=values,
        measure=Fixed(model),
        allocation="global",
    )
    assert plan["budget"]["measured"]["runtime"] == "fake" and plan["budget"]["reached"] <= 0.7 * 1.05
    _, plan = ocnna_fast.prune(
        model, None, target="latency=0.9", example_inputs=x, importance=values, allocation="global"
    )
    measured = plan["budget"]["measured"]
    assert measured["runtime"] == "onnxruntime" and measured["batch"] == 1
    assert plan["budget"]["reached"] == measured["ratio"] <= 0.9 * (1 + LATENCY_TOLERANCE)
