"""prune() on the classification CNNs people use (torchvision, untrained,
small random inputs): score, prune at k=40, keep the output shape, and
round-trip through save_pruned / load_pruned with identical outputs.

The slowest models run only with OCNNA_SLOW_TESTS=1 (README lists them all).
"""

from __future__ import annotations

import os

import pytest
import torch

tv = pytest.importorskip("torchvision")

from ocnna_fast import load_pruned, prune, save_pruned, score  # noqa: E402
from ocnna_fast.models import TORCHVISION_PRUNABLE  # noqa: E402

SLOW = pytest.mark.skipif(not os.environ.get("OCNNA_SLOW_TESTS"), reason="slow; set OCNNA_SLOW_TESTS=1")

MODELS = [
    pytest.param(name, marks=SLOW) if name in ("wide_resnet50_2", "efficientnet_v2_s", "inception_v3") else name
    for name in TORCHVISION_PRUNABLE
]


def _build(name: str):
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return getattr(tv.models, name)(**kw).eval()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", MODELS)
def test_prune_and_round_trip(name, tmp_path):
    model = _build(name)
    size = 299 if name == "inception_v3" else 64
    x = torch.randn(2, 3, size, size)
    scores = score(model, [x], progress=False)
    pruned, plan = prune(model, scores, 40, x[:1])
    with torch.no_grad():
        out, ref = pruned(x), model(x)
    assert out.shape == ref.shape
    assert plan["params_after"] < plan["params_before"]
    save_pruned(tmp_path / "p", pruned, plan, extra={"arch": name})
    again = load_pruned(tmp_path / "p", base_model=_build(name))
    with torch.no_grad():
        torch.testing.assert_close(again(x), out, rtol=0, atol=0)


def test_grouped_convs_lose_the_same_positions_in_every_group():
    """ResNeXt: a 1x1 conv feeding a 32-group conv must keep the same
    count, at the same offsets, in each of the 32 blocks (Torch-Pruning
    failed with 'INDICES element is out of DATA bounds' otherwise)."""
    model = _build("resnext50_32x4d")
    x = torch.randn(4, 3, 64, 64)  # several images: with one, every coefficient of variation is 0 (a tie)
    pruned, plan = prune(model, score(model, [x], progress=False), 40, x[:1])
    d = next(g for g in plan["groups"] if g["root"] == "layer1.0.conv1")
    assert d["blocks"] == 32 and d["channels"] == 128
    per = d["channels"] // d["blocks"]
    offsets = [sorted(r % per for r in d["removed"] if r // per == b) for b in range(d["blocks"])]
    assert all(o == offsets[0] for o in offsets) and len(offsets[0]) > 0
    assert pruned.layer1[0].conv2.groups == 32 and pruned.layer1[0].conv2.in_channels == 128 - len(d["removed"])


def test_a_conv_classifier_keeps_its_outputs():
    """SqueezeNet's last conv produces the logits: found from the graph (the
    producer of the output), never pruned, though it is a scored conv."""
    model = _build("squeezenet1_1")
    x = torch.randn(4, 3, 64, 64)
    pruned, plan = prune(model, score(model, [x], progress=False), 40, x[:1])
    assert pruned.classifier[1].out_channels == 1000
    assert "classifier.1" not in {g["root"] for g in plan["groups"]}
    assert pruned.classifier[1].in_channels < 512  # its inputs are still pruned


def test_channel_shuffle_is_refused_with_a_reason():
    model = tv.models.shufflenet_v2_x0_5().eval()
    x = torch.randn(2, 3, 64, 64)  # scores need at least 2 images
    with pytest.raises(ValueError, match="channel shuffle"):
        prune(model, score(model, [x], progress=False), 40, x[:1])


def test_the_plug_in_can_refuse_a_channel_shuffle_up_front():
    from ocnna_fast.integrations.torch_pruning import OCNNAImportance

    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="channel shuffle"):
        OCNNAImportance.check_model(tv.models.shufflenet_v2_x0_5().eval(), x)
    OCNNAImportance.check_model(tv.models.mobilenet_v2().eval(), x)  # a model it can trace passes
