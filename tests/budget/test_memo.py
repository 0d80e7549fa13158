"""What the allocation memo may change (docs/reliability.md, "Memos"): it
spares measurements, never a width.  Edited, damaged or nonsensical files are
set aside with one line, and the search ends where a fresh one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.budget.lossmemo import LossMemo, losses_digest
from ocnna_fast.budget.search import STAGES, prune_to_budget
from ocnna_fast.selection.groups import conv_groups


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        x = self.bn2(self.conv2(x)).relu()
        return self.fc(self.bn3(self.conv3(x)).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A small BatchNorm network (random weights), its values, images, and a search's memo."""
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(32, 3, 16, 16)
    rng = np.random.default_rng(0)
    _, _, _, groups = conv_groups(model, x[:1])
    values = {root: rng.random(len(g[0].idxs)) for root, g in groups}
    memo = tmp_path_factory.mktemp("memo") / "losses.json"
    result = _run(model, values, x, memo)
    return model, values, x, memo, result


def _run(model, values, x, memo):
    # the two-pass search keeps one memo file (one-pass keeps the curves' losses in a second one)
    kw = dict(allocation="sensitivity", calibration=[x[:16]], evaluation=[x[16:]], refine_steps=4, memo=memo)
    kw["search"] = "staged"
    return prune_to_budget(model, values, x[:1], "macs=0.5", **kw)


def _edit(doc, edit, redigest):
    doc = json.loads(json.dumps(doc))
    edit(doc["losses"])
    if redigest:  # a determined editor who recomputes the digest
        doc["sha256"] = losses_digest(doc["fingerprint"], doc["losses"])
    return doc


def _stem_zero(losses):
    for key in losses:
        if key.startswith('[["conv1"'):
            losses[key] = 0.0


def _set_all(value):
    def edit(losses):
        for key in losses:
            losses[key] = value

    return edit


def _invert(losses):
    top = max(losses.values())
    for key in losses:
        losses[key] = top - losses[key]


def _one(value):
    def edit(losses):
        losses[sorted(losses)[1]] = value

    return edit


def _unknown_group(losses):
    losses['[["nowhere", 3]]'] = 0.5


def _too_many_removed(losses):
    key = sorted(k for k in losses if k != "[]")[0]
    root = json.loads(key)[0][0]
    losses[json.dumps([[root, 10_000]])] = 0.5


@pytest.mark.parametrize(
    "edit, redigest, why",
    [
        (_stem_zero, False, "digest"),  # the hostile pass: stem losses set to 0 cut the stem to half
        (_invert, False, "digest"),
        (_set_all(1e308), False, "digest"),
        (_one(-5.0), True, "negative"),
        (_one(float("nan")), True, "not a finite float"),
        (_one(float("inf")), True, "not a finite float"),
        (_one("0.1"), True, "not a finite float"),
        (_one(True), True, "not a finite float"),
        (_one(1), True, "not a finite float"),
        (_unknown_group, True, "no group of this model"),
        (_too_many_removed, True, "removes 10000"),
    ],
)
def test_an_untrustworthy_memo_is_measured_again(fresh, tmp_path, capsys, edit, redigest, why):
    model, values, x, memo, first = fresh
    doc = json.loads(memo.read_text())
    path = tmp_path / "losses.json"
    path.write_text(json.dumps(_edit(doc, edit, redigest)))
    capsys.readouterr()
    again = _run(model, values, x, path)
    lines = [line for line in capsys.readouterr().err.splitlines() if "losses.json" in line]
    assert len(lines) == 1 and why in lines[0] and "measured again" in lines[0], lines
    assert again.widths == first.widths and again.sensitivity["evaluations"] == first.sensitivity["evaluations"]
    # the file it leaves is a sound memo again: a third run measures nothing
    assert _run(model, values, x, path).sensitivity["evaluations"] == 0


def test_a_sound_memo_is_used_in_silence(fresh, tmp_path, capsys):
    model, values, x, memo, first = fresh
    path = tmp_path / "losses.json"
    path.write_text(memo.read_text())
    capsys.readouterr()
    again = _run(model, values, x, path)
    assert again.sensitivity["evaluations"] == 0 and again.widths == first.widths
    assert "losses.json" not in capsys.readouterr().err


def test_a_resumed_search_says_its_cost_is_not_the_whole_search(fresh, tmp_path):
    """Losses read from an earlier run's memo cost this run nothing: the
    count of them is kept, and the report says the figure is not the whole search's."""
    from ocnna_fast.cli.output import _search_cost

    model, values, x, memo, first = fresh
    assert first.sensitivity["resumed"] == 0
    assert "resumed" not in " ".join(_search_cost(first.sensitivity))
    path = tmp_path / "losses.json"
    path.write_text(memo.read_text())
    again = _run(model, values, x, path)
    assert again.sensitivity["passes"] < first.sensitivity["passes"]
    assert again.sensitivity["resumed"] >= first.sensitivity["evaluations"]
    assert "resumed an earlier run's search" in " ".join(_search_cost(again.sensitivity))


def test_the_unmasked_offset_is_checked_like_any_loss(tmp_path):
    """A NaN for the unmasked model (the offset every loss is measured from) is refused too."""
    path = tmp_path / "m.json"
    losses = {"[]": float("nan")}
    path.write_text(json.dumps({"fingerprint": "f", "losses": losses, "sha256": losses_digest("f", losses)}))
    memo = LossMemo(path, "f", {"a": 8})
    assert memo.get("[]") is None and "not a finite float" in memo.note


@pytest.mark.parametrize("cap_search, steps, stages", [(True, 4, 5), (False, 4, 4), (False, 0, 3)])
def test_the_search_says_where_its_seconds_and_passes_went(fresh, cap_search, steps, stages):
    """report.json's ``stage_seconds`` and ``stage_passes`` name each stage the
    allocation ran (the cap search and the moves only when they run): none
    negative, the seconds within its time, the passes adding up to its passes."""
    import time

    from ocnna_fast.cli.output import _search_cost

    model, values, x, _, _ = fresh
    kw = dict(allocation="sensitivity", calibration=[x[:16]], evaluation=[x[16:]], refine_steps=steps)
    t = time.perf_counter()
    got = prune_to_budget(model, values, x[:1], "macs=0.5", cap_search=cap_search, **kw).sensitivity
    spent = time.perf_counter() - t
    seconds, passes = got["stage_seconds"], got["stage_passes"]
    assert list(seconds) == list(passes) and len(seconds) == stages
    assert ("caps" in seconds) == cap_search and ("moves" in seconds) == (steps > 0)
    assert min(seconds.values()) >= 0 and sum(seconds.values()) <= spent
    assert min(passes.values()) >= 0 and passes["curves"] > 0 and passes["fit"] == 0
    assert sum(passes.values()) == pytest.approx(got["passes"])
    line = _search_cost(got)[-1]
    assert line.startswith("By stage: set-up") and "loss curves" in line and ("cap search" in line) == cap_search
    assert [k for k in STAGES if k in seconds] == list(seconds)  # in the order they ran


def test_every_stage_has_words_in_report_md():
    """A stage report.md has no words for would be left out of its line."""
    from ocnna_fast.cli.output import STAGE_WORDS

    assert tuple(STAGE_WORDS) == STAGES
