"""Export of a pruned CIFAR ResNet to ONNX and TorchScript, verified in each
runtime on real images; a corrupted export must be caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ocnna_fast.cli import main
from ocnna_fast.data.local import cifar10_jpeg, normalize
from ocnna_fast.deploy import export as ex
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ocnna_fast.surgery.plans import save_pruned
from ocnna_fast.surgery.prune import prune


def _deploy_or_skip():
    try:
        ex.require_deploy()
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def pruned_r20(data_dir, tmp_path_factory):
    model = load_weights(build("resnet20"), data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th").eval()
    x, _ = cifar10_jpeg("test", data_dir, limit=48, seed=2)
    images = normalize(x, CIFAR_MEAN, CIFAR_STD)
    rng = np.random.default_rng(0)
    example = torch.zeros(1, 3, 32, 32)
    values = lambda group, name=None: rng.random(len(group[0].idxs))  # noqa: E731  any selection will do
    pruned, plan = prune(model, None, 40, example, importance=values, rule="count")
    folder = tmp_path_factory.mktemp("pruned") / "pruned"
    save_pruned(folder, pruned, plan, extra={"arch": "resnet20", "num_classes": 10, "dataset": "cifar10-jpeg"})
    return pruned, images, folder


@pytest.mark.parametrize("fmt, batch", [("onnx", None), ("onnx", 16), ("torchscript", None), ("torchscript", 16)])
def test_export_reproduces_the_pruned_model(fmt, batch, pruned_r20, tmp_path):
    if fmt == "onnx":
        _deploy_or_skip()
    pruned, images, _ = pruned_r20
    path = tmp_path / f"m.{fmt}"
    info = ex.export_model(pruned, path, fmt, 32, batch=batch)
    assert path.stat().st_size == info["bytes"] and info["batch"] == batch
    if fmt == "onnx":
        assert info["opset"] == ex.DEFAULT_OPSET
    check = ex.verify(pruned, path, fmt, images, batch=batch)  # 48 images: the fixed batch pads the last chunk
    assert check.ok and check.images == 48 and check.top1_agreement == 1.0
    assert check.max_abs_diff <= check.tolerance
    run = ex.load_runner(path, fmt)
    if batch is None:  # a dynamic batch takes any size
        assert run(images[:3].numpy()).shape == (3, 10)


def _corrupt_onnx(path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(biggest).copy()
    arr.flat[: arr.size // 8] *= -1.0  # flip the sign of part of one weight tensor
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    onnx.save(proto, str(path))


def _corrupt_torchscript(path):
    module = torch.jit.load(str(path))
    with torch.no_grad():
        p = next(iter(module.parameters()))
        p.flatten()[: p.numel() // 8] *= -1.0
    module.save(str(path))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_corrupted_export_is_caught(fmt, pruned_r20, tmp_path):
    if fmt == "onnx":
        _deploy_or_skip()
    pruned, images, _ = pruned_r20
    path = tmp_path / f"m.{fmt}"
    ex.export_model(pruned, path, fmt, 32)
    (_corrupt_onnx if fmt == "onnx" else _corrupt_torchscript)(path)
    with pytest.raises(ex.ExportMismatch, match="does not reproduce the model"):
        ex.verify(pruned, path, fmt, images)


def test_export_command_with_base_and_latency(pruned_r20, tmp_path, data_dir, capsys):
    _deploy_or_skip()
    _, _, folder = pruned_r20
    out = tmp_path / "r20.onnx"
    assert (
        main(
            [
                "export",
                "--pruned",
                str(folder),
                "--format",
                "onnx",
                "--out",
                str(out),
                "--base",
                "--verify-images",
                "32",
                "--benchmark",
                "--latency-repeats",
                "2",
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r20.onnx.json").read_text())
    assert out.is_file() and (tmp_path / "r20.base.onnx").is_file()
    assert report["pruned"]["verification"]["ok"] and report["base"]["verification"]["images"] == 32
    assert report["pruned"]["bytes"] < report["base"]["bytes"]  # 40% of the channels are gone
    lat = report["latency"]
    for key in ("eager_b1", "eager_b64", "onnxruntime_b1", "onnxruntime_b64"):
        assert lat["speedup"][key] == pytest.approx(lat["base"][key]["median"] / lat["pruned"][key]["median"])
    assert lat["pruned"]["threads"] == torch.get_num_threads()
    assert lat["pruned"]["weights_bytes"] < lat["base"]["weights_bytes"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left beside the outputs


def test_missing_extra_is_named(monkeypatch, pruned_r20, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ImportError, match=r"ocnna-fast\[deploy\]"):
        ex.export_model(pruned_r20[0], tmp_path / "m.onnx", "onnx", 32)
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match="format must be one of"):
        ex.export_model(pruned_r20[0], tmp_path / "m.x", "tflite", 32)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_leaves_the_model_as_found(fmt, tmp_path):
    pytest.importorskip("onnx") if fmt == "onnx" else None
    model = build("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex.export_model(model, tmp_path / f"m.{fmt}", fmt, 32)
    assert all(m.training for m in model.modules())  # exported in eval mode, from a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _timing(median, q25, q75):
    return {"median": median, "q25": q25, "q75": q75}


@pytest.mark.parametrize(
    "ratio, pruned, says",
    [
        (0.91, _timing(1.81, 1.80, 1.82), "onnxruntime at batch 1 (x0.91)"),  # slower, and trusted: said plainly
        (0.91, _timing(1.81, 1.0, 3.0), None),  # slower, but the machine was busy: the table flags it instead
        (1.23, _timing(1.34, 1.33, 1.35), None),  # faster: nothing to say
    ],
)
def test_the_report_says_plainly_when_the_pruned_model_is_not_faster(ratio, pruned, says):
    from ocnna_fast.deploy.latency_report import latency_markdown, not_faster

    section = {
        "base": {"onnxruntime_b1": _timing(1.65, 1.64, 1.66)},
        "pruned": {"onnxruntime_b1": pruned, "threads": 2},
        "speedup": {"onnxruntime_b1": ratio},
    }
    sentence = not_faster(section)
    if says is None:
        assert sentence is None and "not faster" not in latency_markdown(section)
    else:
        assert says in sentence and sentence in latency_markdown(section)
