"""Pruning to a budget: the cost model against Torch-Pruning's count, the
allowed widths, the greedy allocation, masking against surgery, and the
target met within 2% through the Python API, the job and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import ocnna_fast
from ocnna_fast.budget.allocation import (
    CostModel,
    GroupInfo,
    Target,
    allocate,
    allowed_widths,
    macs_and_params,
    parse_target,
)
from ocnna_fast.budget.lossmemo import losses_digest
from ocnna_fast.budget.masking import Masks, mean_kl
from ocnna_fast.budget.search import budget_groups, prune_to_budget
from ocnna_fast.budget.sensitivity import group_outputs
from ocnna_fast.models import build
from ocnna_fast.surgery.prune import prune


class DW(nn.Module):
    """Pointwise -> depthwise -> pointwise, a residual add, and a classifier:
    the couplings a cost model must follow."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.pw1 = nn.Conv2d(16, 24, 1)
        self.bn1 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.bn2 = nn.BatchNorm2d(24)
        self.pw2 = nn.Conv2d(24, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.pw1(h)))
        y = torch.relu(self.bn2(self.dw(y)))
        return self.fc((h + self.bn3(self.pw2(y))).mean((2, 3)))


def _random_values(model, example, seed=0):
    rng = np.random.default_rng(seed)
    _, _, _, found = budget_groups(model, example, [], {n: None for n, _ in model.named_modules()})
    return {info.root: rng.random(info.width) for _, info in found}


@pytest.mark.parametrize("arch", ["resnet20", "dw"])
def test_the_cost_model_matches_torch_prunings_count(arch):
    torch.manual_seed(0)
    model = (build(arch) if arch != "dw" else DW()).eval()
    example = torch.zeros(1, 3, 32, 32)
    values = _random_values(model, example)
    work, dg, _, found = budget_groups(model, example, [], values)
    cost = CostModel(work, example, dg, [g for g, _ in found])
    rng = np.random.default_rng(1)
    for _ in range(3):
        keep = {info.root: int(rng.integers(1, info.width + 1)) for _, info in found}
        pruned, _ = prune(model, None, None, example, [], importance=values, keep=keep)
        want_macs, want_params = macs_and_params(pruned, 32)
        removed = {r: w - keep[r] for r, w in ((i.root, i.width) for _, i in found)}
        got_macs, got_params = cost.cost(removed)
        assert got_params == pytest.approx(want_params, rel=1e-9)  # parameters: exact
        assert got_macs == pytest.approx(want_macs, rel=0.03)  # MACs: element-wise ops stay constant in the model


def test_allowed_widths():
    assert allowed_widths(16, 1, 1, 0.9)[:3] == [16, 15, 14] and allowed_widths(16, 1, 1, 0.9)[-1] == 2
    assert allowed_widths(16, 1, 8, 0.9) == [16, 8]
    assert allowed_widths(10, 1, 8, 0.9) == [10, 8]  # the original need not be a multiple
    assert allowed_widths(6, 1, 8, 0.9) == [6, 5, 4, 3, 2, 1]  # smaller than round_to: any width
    assert allowed_widths(24, 3, 1, 0.5) == [24, 21, 18, 15, 12]  # blocks, and at most half removed


def test_the_greedy_removes_the_cheapest_loss_per_cost_first():
    """Two groups of the same cost per channel: the one whose penalty is
    lower loses channels first, and the target is met."""

    class Flat:
        base_macs = base_params = 100.0

        def ratio(self, removed, kind):
            return (100.0 - sum(removed.values())) / 100.0

    a = GroupInfo("a", 50, np.linspace(0, 1, 50))
    b = GroupInfo("b", 50, np.linspace(0, 1, 50))
    keep = allocate([a, b], Flat(), Target("macs", 0.7), lambda g, kept: (g.width - kept) * (1 if g.root == "a" else 3))
    assert keep == {"a": 20, "b": 50}
    with pytest.raises(ValueError, match="smallest reachable macs ratio is 0.1000"):
        allocate([a, b], Flat(), Target("macs", 0.05), lambda g, kept: 0.0)


@pytest.mark.parametrize(
    "bad, named",
    [
        ("macs", "'macs'"),
        ("macs=1.5", "1.5"),
        ("macs=0", "0.0"),
        ("flops=0.5", "'flops'"),
        ("macs=nan", "'macs=nan'"),
        ({"macs": 0.5, "params": 0.5}, "{'macs': 0.5, 'params': 0.5}"),
    ],
)
def test_bad_targets_are_named(bad, named):
    """The message names what was wrong with the target, not only that it was."""
    with pytest.raises(ValueError) as err:
        parse_target(bad)
    assert str(err.value).endswith(f"got {named}"), str(err.value)


@pytest.mark.parametrize("arch", ["dw", "resnet20"])
def test_masking_a_group_equals_removing_it(arch):
    """The sensitivity evaluator masks; surgery removes.  Same outputs
    (on ResNet-20 the stage widths' channels also ride the option-A shortcut)."""
    torch.manual_seed(0)
    model = (DW() if arch == "dw" else build("resnet20")).eval()
    x = torch.randn(6, 3, 32, 32)
    example = x[:1]
    values = _random_values(model, example, seed=3)
    work, dg, names, found = budget_groups(model, example, [], values)
    for g, info in found:
        keep_n = info.width // 2
        pruned, plan = prune(model, None, None, example, [], importance=values, keep={info.root: keep_n})
        removed = next(d["removed"] for d in plan["groups"] if d["root"] == info.root)
        masked = copy.deepcopy(model)
        masks = Masks(masked)
        masks.set({name: [chans[p] for p in removed] for name, chans in group_outputs(g, dg, names)})
        with torch.no_grad():
            assert torch.allclose(masked(x), pruned(x), atol=1e-5), info.root
        masks.clear()


@pytest.mark.parametrize("allocation", ["global", "sensitivity"])
def test_a_target_is_met_within_two_percent(allocation):
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(32, 3, 32, 32)
    scores = ocnna_fast.score(model, [x[:16], x[16:]], progress=False)
    batches = [x[:16], x[16:]]
    pruned, plan = ocnna_fast.prune(
        model,
        scores,
        target={"macs": 0.5},
        example_inputs=x[:1],
        allocation=allocation,
        calibration=batches,
        evaluation=batches,
    )
    reached = macs_and_params(pruned, 32)[0] / macs_and_params(model, 32)[0]
    assert abs(reached - 0.5) <= 0.01 and plan["budget"]["reached"] == pytest.approx(reached)
    widths = [g["channels"] - len(g["removed"]) for g in plan["groups"]]
    assert len(set(widths)) > 3  # per-group widths, not one share everywhere
    with pytest.raises(ValueError, match="exclusive"):
        ocnna_fast.prune(model, scores, 40, x[:1], target="macs=0.5")


def test_round_to_keeps_widths_multiple_of_n():
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    scores = ocnna_fast.score(model, [x], progress=False)
    _, plan = ocnna_fast.prune(
        model, scores, target="params=0.6", example_inputs=x[:1], round_to=8, allocation="global"
    )
    for g in plan["groups"]:
        kept = g["channels"] - len(g["removed"])
        assert kept % 8 == 0 or kept == g["channels"], g["root"]


def test_an_unreachable_target_names_the_closest(tmp_path):
    torch.manual_seed(0)
    model = DW().eval()
    x = torch.randn(8, 3, 32, 32)
    values = _random_values(model, x[:1])
    with pytest.raises(ValueError, match="smallest reachable macs ratio"):
        prune_to_budget(model, values, x[:1], "macs=0.05", allocation="global", max_prune=0.5)


def test_sensitivity_curves_grow_with_the_share_masked(data_dir):
    """On the pretrained ResNet-20 and real images: masking more of a group
    costs more (for nearly every group), and the base model costs nothing."""
    from ocnna_fast.data.local import cifar10_jpeg, normalize
    from ocnna_fast.models import load_weights
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    model = load_weights(build("resnet20"), data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th").eval()
    images, _ = cifar10_jpeg("train", data_dir, limit=64, seed=4)
    x = normalize(images, CIFAR_MEAN, CIFAR_STD)
    values = {k: v for k, v in _random_values(model, x[:1]).items()}
    result = prune_to_budget(
        model,
        values,
        x[:1],
        "macs=0.6",
        allocation="sensitivity",
        calibration=[x[:32]],
        evaluation=[x[32:]],
        cap_search=True,
        search="staged",  # re-estimated on the 32 calibration images: curves of 16 self-normalised images are noise
    )
    caps = {float(c): loss for c, loss in result.sensitivity["caps"].items()}
    chosen = min(caps, key=caps.get)  # the kept widths respect the cap that lost least
    assert all(after >= before * (1 - chosen) - 1 for before, after in result.widths.values()), (chosen, caps)
    curves = result.sensitivity["losses"]
    assert set(curves) == set(values)
    growing = [c[0] == 0.0 and c[1] <= c[2] <= c[3] for c in curves.values()]
    assert sum(growing) >= 0.8 * len(growing), curves
    # the loss is KL(base || candidate) per image, checked by hand against another network's predictions
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.conv1.weight.mul_(0.5)
        p, q = torch.softmax(model(x[32:]), 1), torch.softmax(other(x[32:]), 1)
    by_hand = float((p * (p.log() - q.log())).sum(1).mean())
    got = mean_kl(
        other, [x[32:48], x[48:]], [torch.log_softmax(model(x[32:48]), 1), torch.log_softmax(model(x[48:]), 1)]
    )
    assert by_hand > 1e-4 and got == pytest.approx(by_hand, rel=1e-5)


def test_cli_prunes_to_a_target(tmp_path, data_dir, capsys):
    from ocnna_fast.cli import main

    out = tmp_path / "run"
    argv = [
        "prune",
        "--arch",
        "resnet20",
        "--target",
        "macs=0.5",
        "--allocation",
        "global",
        "--round-to",
        "4",
        "--score-images",
        "32",
        "--eval-images",
        "64",
        "--bn-images",
        "32",
        "--finetune-epochs",
        "0",
        "--latency-repeats",
        "0",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "macs=0.5" and abs(report["macs_ratio"] - 0.5) <= 0.01
    assert report["reached"] == pytest.approx(report["macs_ratio"])
    assert all(after % 4 == 0 or after == before for before, after in report["widths"].values())
    printed = capsys.readouterr().out
    assert "macs=0.5 (global allocation" in printed
    # --device auto on a machine without a GPU: the CPU, printed and recorded
    assert "device: cpu, precision fp32" in printed
    assert report["settings"]["device"] == "cpu" and report["settings"]["precision"] == "fp32"
    assert (out / "scores.safetensors").exists() and not (out / "distill").exists()
    # a peer criterion ranks within the groups; it has no OCNNA scores to write
    peer = tmp_path / "peer"
    assert main([*argv[:-3], "--criterion", "l1", "--out", str(peer), "--no-progress"]) == 0
    assert not (peer / "scores.safetensors").exists()
    assert json.loads((peer / "report.json").read_text())["criterion"] == "l1"


def test_k_and_target_are_exclusive_on_the_command_line(capsys):
    from ocnna_fast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--k", "40", "--target", "macs=0.5"])
    assert "not allowed with argument" in capsys.readouterr().err
    for bad in ("macs=2", "flops=0.5", "latency=1.5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["prune", "--target", bad])


def test_cap_search_keeps_the_capped_allocation_that_loses_least():
    """Penalties that would empty group a (cheapest per cost) against a
    combined loss that punishes deep cuts: the search must pick the cap that
    spreads the cut, report every cap's loss, and skip caps too low for
    the budget."""
    from ocnna_fast.budget.sensitivity import CAPS, choose_cap

    class Flat:
        def ratio(self, removed, kind):
            return (100.0 - sum(removed.values())) / 100.0

    class Combined:  # the loss of groups masked together: the deepest share, squared
        def __init__(self):
            self.calls = []

        def loss(self, removed):
            self.calls.append(dict(removed))
            return max(n / 50 for n in removed.values()) ** 2

    a, b = GroupInfo("a", 50, np.linspace(0, 1, 50)), GroupInfo("b", 50, np.linspace(0, 1, 50))
    penalty = lambda g, kept: (g.width - kept) * (1 if g.root == "a" else 3)  # noqa: E731
    ev = Combined()
    cap, losses = choose_cap(ev, [a, b], Flat(), Target("macs", 0.6), penalty, 1, 0.9)
    assert sorted(losses) == sorted({*CAPS, 0.9})
    assert cap == 0.5 and losses[0.5] == pytest.approx(0.25) and losses[0.9] == pytest.approx(0.64)
    assert ev.calls[0] == {"a": 25, "b": 15}  # capped at half: a gives 25, b the rest
    # at 0.3 a cap of 0.5 cannot reach the budget (at most 50 of 100 removed): it is skipped
    cap, losses = choose_cap(Combined(), [a, b], Flat(), Target("macs", 0.3), penalty, 1, 0.9)
    assert 0.5 not in losses and cap == min(losses, key=losses.get) == 0.75


class _QuadraticLoss:
    """A stand-in for ``MaskedEvaluator``: the loss of removing ``n`` of a
    group's channels is ``weight * (n / width) ** 2`` summed over groups, so
    the best split of a fixed removal is known (more from the cheap groups)."""

    def __init__(self, widths, weights):
        self.groups = {r: (GroupInfo(r, w, np.zeros(w)), [], []) for r, w in widths.items()}
        self.weights, self.calls = weights, []

    def loss(self, removed):
        self.calls.append(dict(removed))
        return sum(self.weights[r] * (n / self.groups[r][0].width) ** 2 for r, n in removed.items())

    def anchor(self, removed):  # nothing kept between moves
        pass


def test_refine_lowers_the_loss_without_raising_the_price():
    from ocnna_fast.budget.sensitivity import refine

    widths = {"a": 16, "b": 16, "c": 16}
    ev = _QuadraticLoss(widths, {"a": 10.0, "b": 1.0, "c": 1.0})
    options = {r: list(range(w, 0, -1)) for r, w in widths.items()}  # widest first, as allowed_widths gives them
    start = {"a": 4, "b": 12, "c": 12}  # 24 channels removed, most from the expensive group
    budget = sum(start.values())

    def fits(keep):
        return sum(keep.values()) <= budget

    best, before, after = refine(ev, start, options, fits, steps=60, seed=0)
    assert before == pytest.approx(ev.loss({r: widths[r] - k for r, k in start.items()}))
    assert after == pytest.approx(ev.loss({r: widths[r] - k for r, k in best.items()}))
    assert after < 0.5 * before and fits(best) and best["a"] > start["a"]
    assert all(fits({r: widths[r] - n for r, n in removed.items()}) for removed in ev.calls)  # never over budget
    assert refine(ev, start, options, fits, steps=0)[0] == start  # no steps: the allocation as given


def test_a_stopped_sensitivity_search_resumes_from_its_memo(tmp_path):
    """The measured losses go to the memo file as they come: a rerun
    measures nothing again and chooses the same widths; a run stopped
    halfway (the file cut to its first half) measures only the rest and
    ends with the same widths; other evaluation images are another memo."""
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(32, 3, 32, 32)
    values = _random_values(model, x[:1])
    memo = tmp_path / "ckpt" / "losses.json"

    def run(evaluation):
        kw = dict(allocation="sensitivity", calibration=[x[:16]], evaluation=evaluation, refine_steps=6, memo=memo)
        kw["search"] = "staged"  # one memo file (one-pass keeps the curves' losses in a second)
        return prune_to_budget(model, values, x[:1], "macs=0.5", **kw)

    first = run([x[16:]])
    n = len(json.loads(memo.read_text())["losses"])
    assert first.sensitivity["evaluations"] == n and first.sensitivity["reused"] > 0  # the search revisits
    again = run([x[16:]])
    assert again.sensitivity["evaluations"] == 0 and again.widths == first.widths
    doc = json.loads(memo.read_text())
    doc["losses"] = dict(list(doc["losses"].items())[: n // 2])  # as a run stopped halfway wrote it
    doc["sha256"] = losses_digest(doc["fingerprint"], doc["losses"], doc.get("screened"))
    memo.write_text(json.dumps(doc))
    resumed = run([x[16:]])
    assert resumed.sensitivity["evaluations"] == n - n // 2 and resumed.widths == first.widths
    other = run([x[:16]])
    assert other.sensitivity["evaluations"] > n // 2
    assert json.loads(memo.read_text())["fingerprint"] != doc["fingerprint"]


def test_a_job_with_a_checkpoint_folder_keeps_its_allocation_memo(tmp_path):
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.job.pipeline import ALLOCATION_MEMO, JobData, JobSettings, PruneJob

    pixels = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(32, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    settings = JobSettings(criterion="l1", target="macs=0.5", refine_steps=2, sensitivity_images=16, batch_size=16)
    runs, model = [], build("resnet20").eval()
    for _ in range(2):
        job = PruneJob(
            model,
            JobData(evaluation=images, scoring=images, calibration=images),
            settings,
            checkpoint_dir=tmp_path,
            progress=False,
        )
        job.rank()
        runs.append(job.allocate())
    assert (tmp_path / ALLOCATION_MEMO).is_file()
    assert runs[0].sensitivity["evaluations"] > 0 and runs[1].sensitivity["evaluations"] == 0
    assert runs[1].widths == runs[0].widths
