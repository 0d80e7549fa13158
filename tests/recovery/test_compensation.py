"""Bias compensation for folded-BN models, and the channel maps it relies on."""

from __future__ import annotations

import torch
from torch import nn

from ocnna_fast.recovery.compensation import compensate, input_means
from ocnna_fast.surgery.prune import prune


class Concat(nn.Module):
    """Two conv branches concatenated into a 1x1 consumer (DenseNet-style):
    the consumer loses input channels to two groups, in shifting numbering."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.mix = nn.Conv2d(11, 7, 1)
        self.head = nn.Linear(7, 4)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        self.mixed = self.mix(h)  # kept for the test: the consumer's output before its ReLU
        return self.head(torch.relu(self.mixed).mean((2, 3)))


def _batches(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 10, 10, generator=g) for _ in range(n)]


def _prune(model, k=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    values = {"a": torch.rand(6, generator=g), "b": torch.rand(5, generator=g), "mix": torch.rand(7, generator=g)}
    return prune(model, None, k, torch.zeros(1, 3, 10, 10), importance=values, rule="count", ignored_layers=[])


def test_channel_maps_name_original_channels_across_groups():
    torch.manual_seed(0)
    model = Concat().eval()
    pruned, plan = _prune(model)
    entry = plan["channel_maps"]["mix"]
    kept_in = [c for c in range(11) if c not in entry["removed_inputs"]]
    # the consumer's surviving weights are the original ones at the mapped positions
    want = model.mix.weight[entry["kept_outputs"]][:, kept_in]
    assert torch.equal(pruned.mix.weight, want)
    assert len(entry["removed_inputs"]) == 3 + 2 and any(c >= 6 for c in entry["removed_inputs"])
    head = plan["channel_maps"]["head"]
    assert torch.equal(
        pruned.head.weight, model.head.weight[:, [c for c in range(7) if c not in head["removed_inputs"]]]
    )


def test_compensation_restores_the_consumers_mean_output():
    torch.manual_seed(0)
    model = Concat().eval()
    data = _batches()

    def mean_mixed(m):
        outs = []
        with torch.no_grad():
            for x in data:
                m(x)
                outs.append(m.mixed.double().mean((0, 2, 3)))
        return torch.stack(outs).mean(0)

    pruned, plan = _prune(model)
    kept = plan["channel_maps"]["mix"]["kept_outputs"]
    target = mean_mixed(model)[kept]
    before = mean_mixed(pruned)
    info = compensate(pruned, model, plan, data)
    after = mean_mixed(pruned)
    assert info["compensated"] == 2  # mix, and head (which lost mix's removed outputs)
    assert (before - target).abs().max() > 1e-2  # surgery moved the mean...
    torch.testing.assert_close(after, target, rtol=0, atol=1e-5)  # ...compensation puts it back (1x1 conv: exact)


def test_input_means_are_per_channel_means_of_the_layer_input():
    model = Concat().eval()
    data = _batches()
    got = input_means(model, data, ["a", "head"])
    torch.testing.assert_close(got["a"], torch.cat(data).double().mean((0, 2, 3)))
    assert got["head"].shape == (7,)


def test_layers_without_bias_are_left_alone():
    torch.manual_seed(0)
    model = Concat().eval()
    model.mix.bias = None
    pruned, plan = _prune(model)
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    info = compensate(pruned, model, plan, _batches())
    assert info["skipped_no_bias"] == 1
    assert torch.equal(pruned.state_dict()["mix.weight"], state["mix.weight"])
