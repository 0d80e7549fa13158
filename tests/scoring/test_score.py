"""score(): one hooked pass over real images equals the oracle on the same activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from torch import nn

import ocnna_fast
from ocnna_fast import Scores, score
from ocnna_fast.data.local import foolbox_samples, normalize
from ocnna_fast.models import cifar_resnet, load_akamaster_checkpoint
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.scoring import reference
from ocnna_fast.scoring.overlap import SideStream


@pytest.fixture(scope="module")
def resnet20(data_dir):
    model = cifar_resnet(20)
    load_akamaster_checkpoint(model, data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th")
    return model.eval()


@pytest.fixture(scope="module")
def cifar20(data_dir):
    x, y = foolbox_samples("cifar10", data_dir)
    return normalize(x, CIFAR_MEAN, CIFAR_STD), y


def conv_outputs(model, x):
    """Every prunable conv's output on x, by a plain hooked forward (the oracle's input)."""
    outs = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
        for n, m in ocnna_fast.prunable_convs(model).items()
    ]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return outs, logits


def test_pretrained_weights_and_images_are_real(resnet20, cifar20):
    x, y = cifar20
    _, logits = conv_outputs(resnet20, x)
    assert (logits.argmax(1) == y).sum().item() == 20  # PROVENANCE: 20/20


@pytest.mark.parametrize("n_components", [None, 0.95])
def test_score_equals_oracle_on_real_activations(resnet20, cifar20, n_components):
    x, _ = cifar20
    batches = [x[:7], x[7:15], x[15:]]  # uneven batches on purpose
    got = score(resnet20, batches, n_components=n_components, progress=False)
    outs, _ = conv_outputs(resnet20, x)
    assert list(got) == list(outs) and len(got) == 19
    for name, a in outs.items():
        want = reference.score_activations(a.numpy(), n_components)
        ls = got[name]
        assert ls.count == 20
        np.testing.assert_allclose(ls.score.numpy(), want["score"], rtol=1e-4, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(ls.mean.numpy(), want["mean"], rtol=1e-4, err_msg=name)
        assert ls.dead.tolist() == want["dead"].tolist()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # depthwise: not scored
        self.b = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = self.b(torch.relu(self.dw(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def tiny_data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g)


def test_model_is_left_as_found_even_on_error():
    model = Tiny().train()
    x = tiny_data()
    x_bad = x.clone()
    x_bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'a'"):
        score(model, [x[:4], x_bad], progress=False)
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks
    # and after success too
    s = score(model, [x], progress=False)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert list(s) == ["a", "b"]  # the depthwise conv is not a prunable layer


def test_inputs_tuples_max_images_and_layers():
    model = Tiny().eval()
    x = tiny_data(10)
    y = torch.zeros(10, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    full = score(model, [x[:7]], progress=False)
    cut = score(model, loader, max_images=7, progress=False)  # cuts the second batch at 3
    for n in full:
        assert cut[n].count == 7
        torch.testing.assert_close(cut[n].score, full[n].score, rtol=1e-12, atol=0)
    only_b = score(model, [x], layers=["b"], progress=False)
    assert list(only_b) == ["b"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": ["nope"]}, "no module named"),
        ({"layers": ["dw"]}, "grouped conv"),
        ({"layers": ["fc"]}, "not a prunable conv"),
        ({"n_components": 1.5}, "n_components"),
        ({"max_images": 0}, "max_images"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        score(Tiny(), [tiny_data()], progress=False, **kwargs)


def test_empty_data_and_no_convs():
    with pytest.raises(ValueError, match="no images"):
        score(Tiny(), [], progress=False)
    with pytest.raises(ValueError, match="no images"):
        score(Tiny(), [tiny_data()[:0]], progress=False)
    with pytest.raises(ValueError, match="no prunable conv"):
        score(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), [tiny_data()], progress=False)
    with pytest.raises(TypeError, match="input tensors"):
        score(Tiny(), [{"image": tiny_data()}], progress=False)


def test_shared_module_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.c(self.c(x))

    with pytest.raises(ValueError, match="ran 2 times"):
        score(Twice(), [tiny_data()], progress=False)


def test_unused_conv_is_left_out_with_a_warning():
    model = Tiny()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.warns(UserWarning, match="unused"):
        s = score(model, [tiny_data()], progress=False)
    assert "unused" not in s


@pytest.mark.parametrize("device", DEVICES)
def test_device_argument_moves_and_restores(device):
    model = Tiny()
    s = score(model, [tiny_data()], device=device, progress=False)
    ref = score(model, [tiny_data()], progress=False)
    assert next(model.parameters()).device.type == "cpu"
    for n in ref:
        torch.testing.assert_close(s[n].score, ref[n].score, rtol=1e-4, atol=1e-7)


def test_scores_save_load_round_trip(tmp_path):
    s = score(Tiny(), [tiny_data()], n_components=0.9, progress=False)
    path = tmp_path / "scores.safetensors"
    s.save(path)
    back = Scores.load(path)
    assert list(back) == list(s) and back.n_components == 0.9
    for n in s:
        for field in ("score", "mean", "std", "dead"):
            assert torch.equal(getattr(back[n], field), getattr(s[n], field))
        assert back[n].count == s[n].count


def test_scores_load_refuses_foreign_or_damaged_files(tmp_path):
    s = score(Tiny(), [tiny_data()], progress=False)
    good = tmp_path / "s.safetensors"
    s.save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "pickle").write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign"))
    for name in ("trunc", "pickle", "foreign"):
        with pytest.raises(ValueError):
            Scores.load(tmp_path / name)


def test_progress_bar_counts_images(capsys):
    score(Tiny(), [tiny_data(6), tiny_data(4)], progress=True)
    err = capsys.readouterr().err
    assert "10/" in err or "10img" in err.replace(" ", "")


class InPlaceAfterConv(nn.Module):
    """conv -> ReLU(inplace=True), as in VGG without BatchNorm: the conv's own
    output is overwritten right after its hook runs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(5, 4, 3)

    def forward(self, x):
        return self.c2(self.act(self.c1(x))).mean((2, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overlap", [True, False])
def test_in_place_edits_after_the_conv_are_not_seen(overlap, device):
    model = InPlaceAfterConv().eval()
    x = tiny_data(12, seed=3)
    s = score(model, [x[:5], x[5:]], n_components=0.9, overlap=overlap, device=device, progress=False)
    outs, _ = conv_outputs(model, x)  # clones taken at hook time: pre-ReLU
    assert (outs["c1"] < 0).any()  # the ReLU would have changed what is scored
    for name in ("c1", "c2"):
        want = reference.score_activations(outs[name].numpy(), 0.9)
        np.testing.assert_allclose(s[name].score.numpy(), want["score"], rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_overlap_gives_the_same_scores(device):
    model = Tiny().eval()
    batches = [tiny_data(6, seed=k) for k in range(5)]
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):  # same conv outputs
        a = score(model, batches, overlap=True, device=device, progress=False)
        b = score(model, batches, overlap=False, device=device, progress=False)
    for n in a:
        assert a[n].count == b[n].count == 30
        # fixed summation orders: equal to the last bit
        assert torch.equal(a[n].score, b[n].score)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA GPU")
@pytest.mark.parametrize("forward_priority", [None, -1])
def test_side_stream_scores_a_real_model_like_the_cpu(forward_priority, monkeypatch):
    """torchvision ResNet-18 on CUDA, channels_last, several batches: the side
    stream reads every conv output before its memory is reused, also when the
    forward pass runs on a stream of its own (scoring._FORWARD_PRIORITY)."""
    import torchvision

    from ocnna_fast.scoring import scorer as scoring

    monkeypatch.setattr(scoring, "_FORWARD_PRIORITY", forward_priority)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    batches = [torch.randn(16, 3, 96, 96) for _ in range(4)]
    cpu = score(model, batches, overlap=False, progress=False)
    model.cuda().to(memory_format=torch.channels_last)
    gpu_batches = [b.cuda().to(memory_format=torch.channels_last) for b in batches]
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            side = score(model, gpu_batches, progress=False)
            same = score(model, gpu_batches, overlap=False, progress=False)
    finally:
        model.cpu()
    for n in cpu:
        # fixed summation orders: any difference means the side stream read a wrong activation
        assert torch.equal(side[n].score, same[n].score), n
        torch.testing.assert_close(side[n].score, cpu[n].score, rtol=2e-4, atol=1e-6)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA GPU")
def test_side_stream_holds_a_bounded_number_of_batches():
    """Truncated scoring of 64x64 maps is far slower than these two convs: the
    side stream must not keep every batch's activations alive meanwhile."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).cuda().eval()
    x = torch.randn(16, 3, 64, 64, device="cuda")
    per_batch = 2 * x.shape[0] * 64 * 64 * 64 * 4  # both conv outputs, float32
    batches = 24
    score(model, [x], n_components=0.9, progress=False)  # warm-up: kernels
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    s = score(model, (x for _ in range(batches)), n_components=0.9, progress=False)
    # Reserved, not allocated: a freed block the side stream still reads counts
    # as free in the allocated statistics but cannot be reused, so new memory
    # is reserved for the next batch instead.
    grown = torch.cuda.max_memory_reserved() - base
    assert next(iter(s.values())).count == batches * x.shape[0]
    # at most max_pending scored batches, the one in the forward pass, and slack
    assert grown < (SideStream.max_pending + 3) * per_batch, (grown, per_batch)


def test_data_parallel_is_refused_with_a_way_out():
    model = Tiny().eval()
    with pytest.raises(ValueError, match="model.module"):
        score(nn.DataParallel(model), [tiny_data(4)], progress=False)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("device", DEVICES)
def test_overlap_reports_errors_from_the_background(device):
    model = Tiny().eval()
    bad = tiny_data(6, seed=1)
    bad[4, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        score(
            model,
            [tiny_data(6), tiny_data(6, seed=2), bad, tiny_data(6, seed=3)],
            overlap=True,
            device=device,
            progress=False,
        )
    assert all(not m._forward_hooks for m in model.modules())
    import threading

    assert not any(t.name == "ocnna-fast-score" for t in threading.enumerate())
