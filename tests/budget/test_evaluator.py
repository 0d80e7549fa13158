"""The width search's candidates measured from their first masked layer
(``budget.segments``) against whole passes: the same losses, fewer forward
passes, and the count of forward-pass equivalents exact; the local search's
screen drops a move only on its screened loss; a group's loss curve is
measured from its largest masked share down and stops at the first share
that loses nothing beyond the offset (the shares below it recorded as
losing nothing, unmeasured)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.budget import evaluator as evaluator_module
from ocnna_fast.budget.allocation import GroupInfo
from ocnna_fast.budget.evaluator import MaskedEvaluator
from ocnna_fast.budget.search import budget_groups, prune_to_budget
from ocnna_fast.budget.sensitivity import FRACTIONS, group_outputs, measure_sensitivity, refine
from ocnna_fast.models import build


class Untraceable(nn.Module):
    """Python control flow on a tensor's value: ``torch.fx`` cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.a(x)))
        if float(h.detach().mean()) > -1.0:  # always true; fx cannot know
            h = torch.relu(self.bn_b(self.b(h)))
        return self.fc(h.mean((2, 3)))


def _evaluators(model, side, one_pass=False):
    torch.manual_seed(1)
    x = torch.randn(40, 3, side, side)
    rng = np.random.default_rng(0)
    _, dg, names, found = budget_groups(model, x[:1], [], {n: None for n, _ in model.named_modules()})
    found = [(g, GroupInfo(i.root, i.width, rng.random(i.width), i.blocks)) for g, i in found]
    outputs = [(info, group_outputs(g, dg, names)) for g, info in found]
    calibration, evaluation = [x[:12], x[12:20]], [x[20:30], x[30:]]
    if one_pass:
        calibration = None
    full = MaskedEvaluator(model, outputs, calibration, evaluation, cut=False)
    staged = MaskedEvaluator(model, outputs, calibration, evaluation, cut=True)
    return full, staged, [info for info, _ in outputs]


def _spread_outputs(model: nn.Module, side: int) -> None:
    """Weights whose predictions depend on the input: He-initialised layers,
    the classifier scaled so the logits spread by about 3 across images and
    centred (neither a uniform softmax nor a one-hot one)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in layers:
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
        out = model.eval()(torch.randn(16, 3, side, side))
        scale = 3.0 / float(out.std(0).mean())
        layers[-1].weight.mul_(scale)
        if layers[-1].bias is not None:  # centred: a class ahead by a constant would win every image
            layers[-1].bias.copy_(-scale * out.mean(0).reshape(layers[-1].bias.shape))


def _candidates(infos):
    out = [{i.root: (i.width // 2 // i.blocks) * i.blocks} for i in infos]
    out.append({i.root: (i.width // 4 // i.blocks) * i.blocks for i in infos})  # every group at once
    return [c for c in out if any(c.values())]


@pytest.mark.parametrize(
    "arch, side, traces",
    [("resnet20", 16, True), ("mobilenet_v1_075_imagenet", 32, True), ("untraceable", 16, False)],
)
def test_a_candidate_run_from_its_first_masked_layer_loses_what_a_whole_pass_loses(arch, side, traces):
    torch.manual_seed(0)
    model = (Untraceable() if arch == "untraceable" else build(arch)).eval()
    _spread_outputs(model, side)  # untrained, MobileNet's output ignores its input: every loss would be 0
    full, staged, infos = _evaluators(model, side)
    assert (staged.segments is not None) == traces
    assert staged.offset == pytest.approx(full.offset, rel=1e-5, abs=1e-7)
    candidates = _candidates(infos)
    if traces:  # as the search measures them: the deepest last, so the kept activations only move deeper
        candidates.sort(key=lambda c: staged.segments.entry(staged.masks_of(c)))
    losses = []
    for removed in candidates:
        losses.append(full.loss(removed))
        assert staged.loss(removed) == pytest.approx(losses[-1], rel=1e-4, abs=1e-6), removed
        assert staged.screened(removed, 0.5) == pytest.approx(full.screened(removed, 0.5), rel=1e-4, abs=1e-6)
    assert max(losses) > 1e-3  # masking changes the predictions, so equal losses say something
    # whole passes over 20 calibration images: the reference (20 evaluation images), then the offset and
    # each candidate a calibration and an evaluation pass; each screen the first calibration batch (12
    # images: batches normalised by their own statistics are not cut) and half the evaluation images
    n = len(_candidates(infos)) + 1
    assert full.passes == pytest.approx(1.0 + 2.0 * n + (12 + 10) / 20 * (n - 1))
    if traces:  # less, though the kept activations' own re-estimation costs one more calibration pass
        assert staged.passes < full.passes
    else:
        assert staged.passes == pytest.approx(full.passes)


def test_curves_measured_in_depth_order_cost_a_fraction_of_whole_passes():
    model = build("resnet20").eval()
    full, staged, _ = _evaluators(model, 16)
    a, b = measure_sensitivity(full), measure_sensitivity(staged)
    for root in a.losses:
        assert b.losses[root] == pytest.approx(a.losses[root], rel=1e-4, abs=1e-6)
    assert list(b.losses) == list(a.losses)  # reported in the groups' order, whatever order they were measured in
    full_cost, staged_cost = full.passes - 3.0, staged.passes - 3.0  # less the reference and the offset
    assert staged_cost < 0.75 * full_cost
    assert staged.cache is None  # released after the curves


def test_kept_activations_over_the_memory_limit_fall_back_to_the_input(monkeypatch):
    monkeypatch.setattr(evaluator_module, "CACHE_BYTES", 0)
    model = build("resnet20").eval()
    full, staged, infos = _evaluators(model, 16)
    for removed in _candidates(infos)[:4]:
        assert staged.loss(removed) == pytest.approx(full.loss(removed), rel=1e-4, abs=1e-6)
    assert staged.cache is None and staged.passes == pytest.approx(full.passes)


class _Screened:
    """A stand-in evaluator whose screened loss disagrees with its full one
    for group ``liar``: the screen must decide which moves are measured."""

    def __init__(self, widths, liar):
        self.groups = {r: (GroupInfo(r, w, np.zeros(w)), [], []) for r, w in widths.items()}
        self.liar, self.full_calls, self.screen_calls = liar, [], []

    def _true(self, removed):
        return sum((n / self.groups[r][0].width) ** 2 * (10.0 if r == "a" else 1.0) for r, n in removed.items())

    def loss(self, removed):
        self.full_calls.append(dict(removed))
        return self._true(removed)

    def anchor(self, removed):
        pass

    def screened(self, removed, share):
        self.screen_calls.append(share)
        return self._true(removed) - (100.0 * removed[self.liar] if self.liar else 0.0)


@pytest.mark.parametrize("liar", [None, "a"])
def test_a_screened_move_is_measured_on_every_image_only_when_its_screen_improves(liar):
    widths = {"a": 16, "b": 16, "c": 16}
    options = {r: list(range(w, 0, -1)) for r, w in widths.items()}
    start = {"a": 4, "b": 12, "c": 12}
    budget = sum(start.values())
    ev = _Screened(widths, liar)
    best, before, after = refine(ev, start, options, lambda k: sum(k.values()) <= budget, steps=60, screen=0.25)
    assert set(ev.screen_calls) == {0.25}
    if liar is None:  # an honest screen: the search improves as unscreened, measuring fewer moves in full
        assert after < 0.5 * before and best["a"] > start["a"]
        assert 1 < len(ev.full_calls) < len(ev.screen_calls)
    else:  # a screen that says widening "a" never helps: those moves are never measured in full
        assert all(c["a"] >= 16 - start["a"] for c in ev.full_calls)


def _search_setup():
    """ResNet-20, random values per group, 24 calibration and 24 evaluation images, 8 moves."""
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(48, 3, 16, 16)
    _, _, _, found = budget_groups(model, x[:1], [], {n: None for n, _ in model.named_modules()})
    rng = np.random.default_rng(0)
    values = {info.root: rng.random(info.width) for _, info in found}
    kw = dict(allocation="sensitivity", calibration=[x[:24]], evaluation=[x[24:]], refine_steps=8)
    return model, values, x, kw


def test_a_staged_search_chooses_the_widths_of_whole_passes():
    model, values, x, kw = _search_setup()
    full = prune_to_budget(model, values, x[:1], "macs=0.5", search="full", **kw)
    staged = prune_to_budget(model, values, x[:1], "macs=0.5", search="staged", **kw)
    screened = prune_to_budget(model, values, x[:1], "macs=0.5", search="screened", **kw)
    assert staged.widths == full.widths and staged.sensitivity["search"] == {
        **full.sensitivity["search"],
        "how": "staged",
    }
    assert staged.sensitivity["passes"] < full.sensitivity["passes"]
    assert screened.sensitivity["search"]["screened"] > 0 == staged.sensitivity["search"]["screened"]
    for root, losses in full.sensitivity["losses"].items():
        assert staged.sensitivity["losses"][root] == pytest.approx(losses, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("start", ["lopsided", "even"])
def test_one_pass_moves_run_from_where_they_differ_from_the_current_allocation(start):
    """The local search's moves in one-pass measurement start at the first
    layer where they differ from the allocation it holds: the same losses
    and the same decisions as whole passes, for fewer passes, across kept
    moves (each a new anchor)."""
    torch.manual_seed(0)  # the weights, so whether a move is kept does not hang on the tests run before
    model = build("resnet20").eval()
    full, staged, infos = _evaluators(model, 16, one_pass=True)
    assert full.one_pass and staged.one_pass and staged.segments is not None
    widths = {i.root: i.width for i in infos}
    options = {i.root: list(range(i.width, 0, -i.blocks)) for i in infos}
    # lopsided: the first half of the groups cut deep, the rest barely; even: a quarter of each
    deep = {r: i < len(widths) // 2 for i, r in enumerate(widths)} if start == "lopsided" else {}
    keep = {r: w // 2 if deep.get(r) else w - w // (8 if deep else 4) for r, w in widths.items()}
    budget = sum(keep.values())
    runs = []
    for ev in (full, staged):
        cost = ev.passes
        record = {}
        best, before, after = refine(ev, keep, options, lambda k: sum(k.values()) <= budget, 30, 0, record=record)
        runs.append((best, before, after, record, ev.passes - cost))
        assert ev.anchored is None and ev.anchor_caches == {}  # freed when the search ends
    (best_a, before_a, after_a, rec_a, cost_a), (best_b, before_b, after_b, rec_b, cost_b) = runs
    assert rec_a["kept"] >= 1 and rec_a["measured"] > rec_a["kept"]  # the anchor moved at least once
    assert best_b == best_a and rec_b == rec_a
    assert (before_b, after_b) == pytest.approx((before_a, after_a), rel=1e-4, abs=1e-6)
    assert cost_b < 0.9 * cost_a


def test_a_one_pass_search_measures_candidates_in_one_pass():
    model, values, x, kw = _search_setup()
    staged = prune_to_budget(model, values, x[:1], "macs=0.5", search="staged", **kw)
    one = prune_to_budget(model, values, x[:1], "macs=0.5", search="one-pass", curve_share=1.0, **kw)
    assert one.sensitivity["search"]["how"] == "one-pass"
    # a candidate is an evaluation pass alone where staged re-estimates on the calibration images first
    assert one.sensitivity["passes"] < 0.7 * staged.sensitivity["passes"]
    # the curves on half the images: their own evaluator, counted in the same unit
    half = prune_to_budget(model, values, x[:1], "macs=0.5", search="one-pass", curve_share=0.5, **kw)
    assert half.sensitivity["curve_images"] == 12 and half.sensitivity["pass_images"] == 24
    assert half.sensitivity["passes"] < 0.8 * one.sensitivity["passes"]
    assert half.sensitivity["evaluations"] >= 3 * len(half.widths)  # every curve candidate counted
    with pytest.raises(ValueError, match="one-pass search only"):
        prune_to_budget(model, values, x[:1], "macs=0.5", search="staged", curve_share=0.5, **kw)


def test_an_evaluator_given_the_reference_measures_what_one_computing_it_measures():
    """The curves' evaluator over the first images takes the unpruned model's
    log-probabilities from the main evaluator's rows instead of a pass of its
    own: the same losses, one reference pass fewer counted; a reference of
    another shape is refused."""
    model = build("resnet20").eval()
    main, _, infos = _evaluators(model, 16, one_pass=True)
    first = [torch.cat(main.evaluation)[:9]]
    outputs = [(info, outs) for info, outs, _ in main.groups.values()]
    own = MaskedEvaluator(model, outputs, None, first)
    given = MaskedEvaluator(model, outputs, None, first, reference=[torch.cat(main.reference)[:9]])
    assert given.passes == pytest.approx(own.passes - 1.0)  # the reference pass of 9 images, 9 to a pass
    for removed in _candidates(infos):
        assert given.loss(removed) == pytest.approx(own.loss(removed), rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="one row of log-probabilities per evaluation image"):
        MaskedEvaluator(model, outputs, None, first, reference=[torch.cat(main.reference)[:8]])


class _TableLoss:
    """A stand-in for ``MaskedEvaluator``: group ``g``'s loss with ``n`` of
    its 8 channels masked is ``TABLE[g][n]``; ``asked`` lists what was measured."""

    def __init__(self, table) -> None:
        self.table = table
        self.groups = {r: (GroupInfo(r, 8, np.zeros(8)), [], []) for r in table}
        self.segments, self.offset, self.asked = None, 0.0, []

    def loss(self, removed) -> float:
        ((root, n),) = removed.items()
        self.asked.append((root, n))
        return self.table[root][n]

    def release(self) -> None:
        pass


# masked 2, 4 and 6 of 8 channels (the shares 0.25, 0.5, 0.75): the losses the stand-in measures,
# the curve recorded, and the shares measured, largest first
CASES = [
    ("growing", (0.1, 0.2, 0.4), (0.1, 0.2, 0.4), (6, 4, 2)),
    ("flat at zero", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (6,)),
    ("zero at the top: noise below is not measured", (0.05, 0.01, 0.0), (0.0, 0.0, 0.0), (6,)),
    ("zero in the middle", (0.1, 0.0, 0.3), (0.0, 0.0, 0.3), (6, 4)),
    ("zero at the bottom", (0.0, 0.2, 0.3), (0.0, 0.2, 0.3), (6, 4, 2)),
    ("not growing, never zero", (0.3, 0.1, 0.2), (0.3, 0.1, 0.2), (6, 4, 2)),
]


@pytest.mark.parametrize("name, measured, recorded, asked", CASES, ids=[c[0] for c in CASES])
def test_a_curve_stops_at_the_first_share_that_loses_nothing(name, measured, recorded, asked):
    assert FRACTIONS == (0.25, 0.5, 0.75)  # the table's shares
    ev = _TableLoss({"g": {2: measured[0], 4: measured[1], 6: measured[2]}})
    curves = measure_sensitivity(ev)
    assert curves.losses["g"] == [0.0, *recorded]
    assert ev.asked == [("g", n) for n in asked]


def test_on_a_network_the_curves_are_the_measured_points_with_zeros_below_a_zero():
    """A ResNet-20 with spread outputs: each point is the evaluator's own
    loss, except below a measured zero; and the skipped points cost nothing."""
    torch.manual_seed(0)
    model = build("resnet20").eval()
    _spread_outputs(model, 16)
    full, staged, infos = _evaluators(model, 16, one_pass=True)
    curves = measure_sensitivity(staged)
    skipped = 0
    for info in infos:
        per = info.width // info.blocks
        points = [full.loss({info.root: int(round(f * per)) * info.blocks}) for f in FRACTIONS]
        zero = max((i for i, p in enumerate(points) if p == 0.0), default=-1)
        expect = [0.0 if i <= zero else p for i, p in enumerate(points)]
        assert curves.losses[info.root][1:] == pytest.approx(expect, rel=1e-4, abs=1e-6), info.root
        skipped += max(zero, 0)
    measured = len(infos) * len(FRACTIONS) - skipped
    assert staged.evaluations == measured + 1  # and the offset
    assert any(max(c) > 1e-3 for c in curves.losses.values())
