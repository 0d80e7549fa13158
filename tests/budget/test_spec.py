"""One specification of how to prune: the same words give the same
``PruneSpec`` from command-line flags, a bench method string and Python
keywords; its defaults are defined once; a bad value is refused by name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ocnna_fast
from ocnna_fast.budget import entry as search
from ocnna_fast.budget.spec import REFINE_STEPS, PruneSpec
from ocnna_fast.cli import build_parser
from ocnna_fast.cli import prune as prune_command
from ocnna_fast.cli.budget_options import BUDGET_DEFAULTS
from ocnna_fast.job.pipeline import JobSettings


class _Captured(Exception):
    pass


def _python_spec(monkeypatch, **keywords) -> PruneSpec:
    """The specification ``ocnna_fast.prune`` hands to the budget search."""
    seen = {}

    def capture(model, values, example, spec, **kw):
        seen["spec"] = spec
        raise _Captured

    monkeypatch.setattr(search, "score_values", lambda *a, **k: {})
    monkeypatch.setattr(search, "prune_to_budget", capture)
    with pytest.raises(_Captured):
        ocnna_fast.prune(torch.nn.Conv2d(3, 4, 3), None, example_inputs=torch.zeros(1, 3, 8, 8), **keywords)
    return seen["spec"]


def _cli_spec(flags) -> PruneSpec:
    args = build_parser().parse_args(["prune", *flags])
    return prune_command.spec_of(args)


CASES = [
    # (prune flags, bench method string, Python keywords)
    (
        ["--target", "macs=0.5", "--criterion", "l1"],
        "sensitivity:l1",
        dict(target="macs=0.5", criterion="l1"),
    ),
    (
        ["--target", "params=0.4", "--criterion", "ocnna-rms", "--no-cap-search", "--refine-steps", "0"],
        "sensitivity:ocnna-rms,no-cap-search,refine-steps=0",
        dict(target={"params": 0.4}, criterion="ocnna-rms", cap_search=False, refine_steps=0),
    ),
    (
        [
            "--target",
            "macs=0.3",
            "--criterion",
            "l1",
            "--allocation",
            "global",
            "--round-to",
            "8",
            "--max-prune",
            "0.7",
        ],
        "global:l1,round-to=8,max-prune=0.7",
        dict(target="macs=0.3", criterion="l1", allocation="global", round_to=8, max_prune=0.7),
    ),
]


@pytest.mark.parametrize("flags, method, keywords", CASES, ids=[c[1] for c in CASES])
def test_the_same_words_give_the_same_specification(flags, method, keywords, monkeypatch):
    from_cli = _cli_spec(flags)
    _, from_method = PruneSpec.from_method(method, keywords["target"])
    from_python = _python_spec(monkeypatch, **keywords)
    assert from_cli == from_method == from_python
    assert from_cli.k is None and from_cli.target == str(from_cli.target)


def test_the_defaults_are_defined_once():
    spec = PruneSpec()
    assert spec.k == 40.0 and spec.target is None and spec.allocation == "sensitivity"
    assert spec.refine_steps == REFINE_STEPS and spec.cap_search is True
    assert JobSettings().prune_fields() == spec.prune_fields()
    # the defaults the command line fills in are the specification's (the curve share follows the search)
    assert {name: getattr(PruneSpec(curve_share=None), name) for name in BUDGET_DEFAULTS if name != "curve_share"} == {
        k: v for k, v in BUDGET_DEFAULTS.items() if k != "curve_share"
    }
    assert BUDGET_DEFAULTS.get("curve_share") is None and spec.curve_share == 1.0
    assert _cli_spec([]) == spec  # the specification of no flags (prune itself asks for a rule first)
    assert _cli_spec(["--target", "macs=0.5"]) == PruneSpec(target="macs=0.5")


def test_python_and_the_command_line_share_the_allocation_default(monkeypatch):
    assert _python_spec(monkeypatch, target="macs=0.5").allocation == _cli_spec(["--target", "macs=0.5"]).allocation


@pytest.mark.parametrize(
    "keywords, message",
    [
        (dict(k=40, target="macs=0.5"), "exclusive"),
        (dict(k=100), "k"),
        (dict(target="flops=0.5"), "macs"),
        (dict(criterion="nope"), "unknown criterion"),
        (dict(allocation="greedy"), "allocation must be"),
        (dict(round_to=0), "round_to"),
        (dict(max_prune=1.0), "max_prune"),
        (dict(refine_steps=-1), "refine_steps"),
        (dict(refine_steps=True), "refine_steps"),
        (dict(cap_search="yes"), "cap_search"),
        (dict(sensitivity_images=0), "sensitivity_images"),
        (dict(latency_runtime="tflite"), "latency runtime"),
        (dict(folded="least-squares"), "folded"),
    ],
)
def test_bad_values_are_refused_by_name(keywords, message):
    with pytest.raises(ValueError, match=message):
        PruneSpec(**keywords)


def test_a_job_cannot_be_given_settings_that_skip_the_checks():
    settings = JobSettings(target="macs=0.5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_prune = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_prune"):
        dataclasses.replace(settings, max_prune=2.0)


def test_python_refuses_budget_options_without_a_target():
    with pytest.raises(ValueError, match="round_to: only a target budget uses them"):
        ocnna_fast.prune(torch.nn.Conv2d(3, 4, 3), None, 40, torch.zeros(1, 3, 8, 8), round_to=8)
