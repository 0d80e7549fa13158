"""A pruned folder across precisions and against what its plan may ask
(docs/reliability.md, "Precision" and "Plans"): a model keeps its dtype when
saved, loaded and exported; a plan cannot make a loader allocate without bound."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast.deploy import export as ex
from ocnna_fast.surgery.plans import PLAN_DIGEST, load_pruned, save_pruned
from ocnna_fast.surgery.prune import prune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.fc = nn.Conv2d(8, 6, 3), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.b(self.bn(self.a(x)).relu()).mean((2, 3)))


def _pruned_folder(tmp_path, dtype):
    torch.manual_seed(0)
    model = Net().to(dtype).eval()
    rng = np.random.default_rng(0)
    example = torch.zeros(1, 3, 8, 8, dtype=dtype)
    pruned, plan = prune(model, None, 40, example, importance=lambda g, name=None: rng.random(len(g[0].idxs)))
    save_pruned(tmp_path / "pruned", pruned, plan)
    return pruned, tmp_path / "pruned"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_model_keeps_its_dtype_when_saved_and_loaded(tmp_path, dtype):
    """The hostile pass: a half model's folder failed to load (the plan's example input was float)."""
    pruned, folder = _pruned_folder(tmp_path, dtype)
    for base in (Net().to(dtype), Net()):  # the user's own model in its precision, or a float one
        loaded = load_pruned(folder, base)
        assert {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()} == {dtype}
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pruned.state_dict().values()))
        x = torch.randn(2, 3, 8, 8, dtype=dtype)
        with torch.no_grad():
            assert torch.equal(loaded(x), pruned(x))


@pytest.mark.parametrize(
    "dtype, fmt", [(torch.float16, "torchscript"), (torch.bfloat16, "torchscript"), (torch.float16, "onnx")]
)
def test_an_export_keeps_the_models_dtype(tmp_path, dtype, fmt):
    if fmt == "onnx":
        try:
            ex.require_deploy()
        except ImportError as exc:
            pytest.skip(str(exc))
    pruned, _ = _pruned_folder(tmp_path, dtype)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    report = ex.export_verified({"pruned": (pruned, out)}, fmt, torch.randn(8, 3, 8, 8), 8)
    assert report["pruned"]["verification"]["ok"]
    if fmt == "torchscript":
        module = torch.jit.load(str(out))
        assert {p.dtype for p in module.parameters()} == {dtype}
    else:
        import onnx

        graph = onnx.load(str(out)).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def _redigested(folder, edit):
    """Edits plan.json and recomputes its digest, as a determined tamperer would."""
    from ocnna_fast.surgery.plans import plan_digest

    doc = json.loads((folder / "plan.json").read_text())
    edit(doc)
    doc[PLAN_DIGEST] = plan_digest(doc)
    (folder / "plan.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("shape", [[3, 65536, 65536], [3, 4096, 4096], [3, 4096, 1366], [1, 1 << 16, 1 << 9]])
def test_a_plan_cannot_ask_for_a_huge_example(tmp_path, shape):
    """The hostile pass: [3, 65536, 65536] with a recomputed digest made a loader allocate 51 GB."""
    _, folder = _pruned_folder(tmp_path, torch.float32)
    _redigested(folder, lambda d: d.update(input_shape=shape))
    with pytest.raises(ValueError, match="values per image"):
        load_pruned(folder, Net())


def test_the_plan_digest_is_pinned():
    """The digest's canonical form is a file format: pinned to a value, not recomputed by the test."""
    from ocnna_fast.surgery.plans import plan_digest

    doc = {"format": "ocnna-fast-plan", "k": 40.0, "groups": [{"root": "a", "channels": 8, "removed": [1, 5]}]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert plan_digest(doc) == hashlib.sha256(text.encode()).hexdigest()
    assert plan_digest(doc) == "18215fa0493c985c0750f7efadfc505352b4ac5b72a2ada22e0716f6239f6242"
