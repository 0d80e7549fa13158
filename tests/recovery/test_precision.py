"""Mixed precision: autocast where it is asked for (bfloat16 on the CPU),
float32 weights throughout, and training that follows the float32 run."""

from __future__ import annotations

import pytest
import torch

from ocnna_fast._util.precision import autocast, grad_scaler, resolve_precision
from ocnna_fast.data.evaluation import evaluate
from ocnna_fast.data.tensorimages import TensorImages
from ocnna_fast.models import build
from ocnna_fast.recovery.distill import distill


@pytest.mark.parametrize(
    "asked, device, means",
    [
        (None, "cpu", "fp32"),
        ("auto", "cpu", "fp32"),
        (None, "cuda", "amp"),
        ("amp", "cpu", "amp"),
        ("fp32", "cuda", "fp32"),
    ],
)
def test_what_a_precision_means_on_a_device(asked, device, means):
    assert resolve_precision(asked, device) == means


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", "cpu")


def _data(n=64, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, side, side, generator=g) * 255).to(torch.uint8)
    return TensorImages(x, torch.randint(0, 10, (n,), generator=g), (0.5,) * 3, (0.25,) * 3)


def _conv_dtypes(model):
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen, handle


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("amp", torch.bfloat16)])
def test_evaluation_runs_its_convolutions_in_the_precision_asked(precision, dtype):
    torch.manual_seed(0)
    model = build("resnet20")
    seen, handle = _conv_dtypes(model)
    acc = evaluate(model, _data(), batch_size=32, precision=precision)
    handle.remove()
    assert 0.0 <= acc <= 100.0 and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_amp_distillation_on_the_cpu_follows_the_float32_run():
    runs = {}
    for precision in ("fp32", "amp"):
        torch.manual_seed(0)
        teacher, student = build("resnet20").eval(), build("resnet20")
        seen, handle = _conv_dtypes(student)
        hist = distill(student, teacher, _data(), epochs=2, lr=0.01, batch_size=32, progress=False, precision=precision)
        handle.remove()
        assert all(p.dtype == torch.float32 for p in student.parameters())  # weights stay float32
        assert set(seen) == {torch.bfloat16 if precision == "amp" else torch.float32}
        runs[precision] = [h["loss"] for h in hist]
    for a, b in zip(runs["fp32"], runs["amp"]):
        assert b == pytest.approx(a, rel=0.05)  # bfloat16 keeps 8 bits of mantissa: close, not equal


def test_float16_gets_a_gradient_scaler_and_bfloat16_none():
    assert grad_scaler("fp32", "cpu") == (None, "float32")
    assert grad_scaler("amp", "cpu") == (None, "bfloat16")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_resumed_float16_run_keeps_its_loss_scale(tmp_path, monkeypatch):
    """float16 autocast trains with a gradient scaler whose scale adapts; a
    checkpoint keeps it, so a stopped run resumes to the weights of one that
    was not stopped (a GPU without bfloat16's path, forced here on the CPU)."""
    from ocnna_fast._util import precision as precision_module

    monkeypatch.setattr(precision_module, "amp_dtype", lambda device: torch.float16)
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no device-generic GradScaler")

    def run(folder, stop=None):
        torch.manual_seed(0)
        teacher, student = build("resnet20").eval(), build("resnet20")
        distill(
            student, teacher, _data(), epochs=2, lr=0.01, batch_size=32, progress=False, precision="amp",
            checkpoint_dir=folder, stop_after_epoch=stop,
        )  # fmt: skip
        return student

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop=1)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert "scaler" in ck and ck["scaler"]["scale"] > 0
    resumed = run(tmp_path / "b")
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
