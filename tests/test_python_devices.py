"""Every Python entry point of the job takes ``device=``: on the CPU the
result equals the one where the model is (the device plumbing changes
nothing), the caller's model stays where it was, and a GPU asked for where
none is usable is one clear error, not a crash deep in a kernel."""

from __future__ import annotations

import pytest
import torch

import ocnna_fast
from ocnna_fast.budget.evaluator import MaskedEvaluator
from ocnna_fast.budget.search import budget_groups
from ocnna_fast.budget.sensitivity import group_outputs
from ocnna_fast.data.evaluation import evaluate
from ocnna_fast.models import build
from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm
from ocnna_fast.recovery.distill import TensorImages, distill
from ocnna_fast.recovery.refit import reconstruct


def _setup():
    torch.manual_seed(0)
    model = build("resnet20").eval()
    x = torch.randn(24, 3, 16, 16)
    data = TensorImages((x * 40 + 128).clamp(0, 255).to(torch.uint8), torch.arange(24) % 10, (0.5,) * 3, (0.25,) * 3)
    scores = ocnna_fast.score(model, [x[:12], x[12:]], progress=False)
    return model, x, data, scores


def _pruned(model, scores, x, **kw):
    return ocnna_fast.prune(model, scores, target="macs=0.5", calibration=[x[:12]], evaluation=[x[12:]], **kw)


def _evaluator(model, x, **kw):
    _, dg, names, found = budget_groups(model, x[:1], [], {n: None for n, _ in model.named_modules()})
    outputs = [(info, group_outputs(g, dg, names)) for g, info in found]
    return MaskedEvaluator(model, outputs, None, [x], **kw), [info for info, _ in outputs]


def test_on_the_cpu_device_cpu_gives_what_the_models_own_device_gives():
    model, x, data, scores = _setup()
    base, plan = _pruned(model, scores, x, refine_steps=2)
    same, plan_cpu = _pruned(model, scores, x, refine_steps=2, device="cpu")
    assert plan_cpu["groups"] == plan["groups"]
    for (k, a), b in zip(base.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k
    ev, infos = _evaluator(model, x)
    ev_cpu, _ = _evaluator(model, x, device="cpu")
    removed = {infos[0].root: infos[0].width // 2}
    assert ev_cpu.loss(removed) == ev.loss(removed) and ev.loss(removed) > 0
    a, plan0 = _pruned(model, scores, x, allocation="global")
    b = _pruned(model, scores, x, allocation="global")[0]
    reconstruct(a, model, plan0, [x])
    reconstruct(b, model, plan0, [x], device="cpu")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert evaluate(a, data, device="cpu") == evaluate(a, data)


CUDA_CALLS = {
    "prune": lambda m, x, d, s: _pruned(m, s, x, refine_steps=0, device="cuda"),
    "MaskedEvaluator": lambda m, x, d, s: _evaluator(m, x, device="cuda"),
    "reconstruct": lambda m, x, d, s: reconstruct(m, m, {}, [x], device="cuda"),
    "distill": lambda m, x, d, s: distill(m, m, d, epochs=1, lr=0.01, device="cuda", progress=False),
    "evaluate": lambda m, x, d, s: evaluate(m, d, device="cuda"),
    "recalibrate_batchnorm": lambda m, x, d, s: recalibrate_batchnorm(m, [x], device="cuda"),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a usable GPU: the request is served")
@pytest.mark.parametrize("name", sorted(CUDA_CALLS))
def test_a_gpu_asked_for_where_none_is_usable_is_one_clear_error(name):
    model, x, data, scores = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no CUDA GPU is usable here"):
        CUDA_CALLS[name](model, x, data, scores)
    for k, v in model.state_dict().items():  # refused before anything ran
        assert torch.equal(v, before[k]), k


def test_layers_kept_out_are_found_again_in_the_copy_made_for_another_device():
    """On another device ``prune`` works on a copy: the layers the caller
    kept out are the copy's modules of the same names (not the originals,
    which the copy's graph does not hold)."""
    import copy

    from ocnna_fast.budget.entry import _same_in

    model = build("resnet20")
    work = copy.deepcopy(model)
    mine = [model.conv1, model.layer2[0].conv2, "not a module"]
    found = _same_in(work, model, mine)
    assert found[0] is work.conv1 and found[1] is work.layer2[0].conv2 and found[2] == "not a module"
