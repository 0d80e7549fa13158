"""OCNNAImportance inside Torch-Pruning's own pruner."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

torchvision = pytest.importorskip("torchvision")

from helpers import fake_scores  # noqa: E402

from ocnna_fast.integrations.torch_pruning import OCNNAImportance  # noqa: E402
from ocnna_fast.surgery.prune import prune  # noqa: E402


def widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_local_pruning_equals_ocnna_prune(arch):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    scores = fake_scores(model, seed=4)
    ours, plan = prune(model, scores, 50, x, ignored_layers=[model.fc])

    theirs = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    theirs.load_state_dict(model.state_dict())
    pruner = tp.pruner.BasePruner(
        theirs, x, importance=OCNNAImportance(scores), pruning_ratio=0.5, ignored_layers=[theirs.fc]
    )
    pruner.step()
    assert widths(theirs) == widths(ours)
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), n
    # an uncoupled layer (layer1.0.conv1) keeps exactly its top-scored half
    s = scores["layer1.0.conv1"].score
    top = torch.argsort(s, descending=True)[: len(s) // 2].sort().values
    assert plan["kept"]["layer1.0.conv1"] == top.tolist()
    kept_in = plan["kept"]["conv1"]  # its input is the stem's output, pruned too
    assert torch.equal(theirs.layer1[0].conv1.weight, model.layer1[0].conv1.weight[top][:, kept_in])


def test_global_and_iterative_pruning_run():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    scores = fake_scores(model, seed=5)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=OCNNAImportance(scores, model=model),
        pruning_ratio=0.4,
        global_pruning=True,
        iterative_steps=3,
        ignored_layers=[model.fc],
    )
    for _ in range(3):
        pruner.step()
        with torch.no_grad():
            assert model(x).shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before


def test_single_conv_group_returns_that_convs_scores():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    scores = fake_scores(model, seed=6)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 64, 64))
    group = DG.get_pruning_group(model.layer1[0].conv1, tp.prune_conv_out_channels, list(range(64)))
    imp = OCNNAImportance(scores, criterion="ocnna")(group)
    torch.testing.assert_close(imp, scores["layer1.0.conv1"].score.float())


def test_groups_without_scores_are_skipped():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    only = {k: v for k, v in fake_scores(model).items() if k == "layer2.0.conv1"}
    pruner = tp.pruner.BasePruner(
        model, x, importance=OCNNAImportance(only), pruning_ratio=0.5, ignored_layers=[model.fc]
    )
    pruner.step()
    w = widths(model)
    assert w["layer2.0.conv1"] == 64 and w["layer2.1.conv1"] == 128  # only the scored layer changed
