"""What a hostile or careless user can hand the tool: files that name code,
tied scores, counts and rates out of range, integer weights, repeated or
mismatched benchmark cells, exports that fail verification, devices that
cannot hold the weights, a folder two runs write at once, and the errors
each must give (docs/reliability.md lists which test pins which promise)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ocnna_fast import cli, prune, recalibrate_batchnorm, save_pruned, score
from ocnna_fast.bench.equal_structure import check_cells, run_suite
from ocnna_fast.cli.outdir import OutputLocked, locked
from ocnna_fast.job.pipeline import JobData, JobSettings
from ocnna_fast.models import build, load_weights
from ocnna_fast.recovery.distill import TensorImages, TrainingDiverged, distill, evaluate
from ocnna_fast.scoring.scores import LayerScores
from ocnna_fast.selection.rules import kept_count, select_channels
from ocnna_fast.surgery.plans import load_pruned, read_plan

DISTILL = sys.modules["ocnna_fast.recovery.distill"]


class Net(nn.Module):
    def __init__(self, width=10):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.b = nn.Conv2d(width, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.bn(self.a(x))))).mean((2, 3)))


def _images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 3


def _data(n=12, seed=0, augment=False):
    x, y = _images(n, seed)
    return TensorImages(x, y, (0.5,) * 3, (0.25,) * 3, augment=augment)


def _rewrite_plan(folder, edit):
    """Edits plan.json and recomputes its digest, as a determined tamperer would."""
    from ocnna_fast.surgery.plans import PLAN_DIGEST, plan_digest

    doc = json.loads((folder / "plan.json").read_text())
    edit(doc)
    doc[PLAN_DIGEST] = plan_digest(doc)
    (folder / "plan.json").write_text(json.dumps(doc))


# ---- a pruned folder never runs code ---------------------------------------------------

FACTORY = textwrap.dedent("""
    import pathlib
    pathlib.Path(__file__).with_name("IMPORTED").write_text("the module ran")
    from torch import nn

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
""")


@pytest.fixture()
def user_pruned(tmp_path, monkeypatch):
    """A folder pruned from a user's ``module:factory`` model; the module
    leaves a file IMPORTED beside itself whenever it is imported."""
    name = f"hostile_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = f"{name}:net"
    model = build(spec).eval()
    x = torch.randn(4, 3, 8, 8)
    pruned, plan = prune(model, score(model, [x]), 50, x[:1])
    save_pruned(tmp_path / "pruned", pruned, plan, extra={"arch": spec, "num_classes": 3, "input_size": 8})
    (tmp_path / "IMPORTED").unlink()
    sys.modules.pop(name, None)
    yield tmp_path / "pruned", spec, pruned
    sys.modules.pop(name, None)


def test_loading_a_user_models_folder_imports_nothing(user_pruned):
    folder, spec, pruned = user_pruned
    with pytest.raises(ValueError, match="never imports or calls code"):
        load_pruned(folder)
    assert not (folder.parent / "IMPORTED").exists()
    # the caller builds the model: then it loads, with the saved weights
    again = load_pruned(folder, base_model=build(spec))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(again(x), pruned(x))


def test_an_edited_plan_is_refused_before_anything_runs(user_pruned):
    folder, _, _ = user_pruned
    doc = json.loads((folder / "plan.json").read_text())
    doc["model"]["arch"] = "os:abort"
    (folder / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="edited or damaged"):
        load_pruned(folder)
    # with the digest recomputed too, a spec is still never imported nor called
    _rewrite_plan(folder, lambda d: d["model"].update(arch="os:abort"))
    with pytest.raises(ValueError, match="never imports or calls code"):
        load_pruned(folder)
    doc.pop("plan_sha256")
    (folder / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="carries no plan_sha256"):
        load_pruned(folder)


def test_cli_rebuilds_a_user_model_only_from_an_explicit_equal_model_option(user_pruned, capsys):
    folder, spec, _ = user_pruned
    common = ["evaluate", "--pruned", str(folder), "--dataset", "imagenet-sample", "--no-progress"]
    assert cli.main(common) == 2
    assert f"pass --model {spec}" in capsys.readouterr().err
    assert not (folder.parent / "IMPORTED").exists()
    assert cli.main([*common, "--model", "os:getcwd"]) == 2
    assert "is not the model" in capsys.readouterr().err
    assert not (folder.parent / "IMPORTED").exists()
    args = cli.build_parser().parse_args(["export", "--pruned", str(folder), "--out", "x.onnx", "--model", spec])
    model, plan_model = cli.loading.load_pruned_folder(args)  # the module is imported because the user named it
    assert plan_model["arch"] == spec and (folder.parent / "IMPORTED").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(k="40"), "'k' must be a percentile"),
        (lambda d: d.update(input_shape=[3, -8, 8]), "input_shape"),
        (lambda d: d["groups"][0].update(channels="8"), "group entry"),
        (lambda d: d["groups"][0].update(removed=[0, 0]), "group entry"),
        (lambda d: d.update(layers_after={"0": {"in": 3, "out": -1}}), "layers_after"),
        (lambda d: d["model"].update(num_classes="3"), "'model' entry"),
        (lambda d: d.update(groups="all"), "'groups' must be a list"),
    ],
)
def test_plan_values_of_the_wrong_type_are_named(user_pruned, edit, message):
    folder, spec, _ = user_pruned
    _rewrite_plan(folder, edit)
    with pytest.raises(ValueError, match=message):
        read_plan(folder)
    with pytest.raises(ValueError, match=message):
        load_pruned(folder, base_model=build(spec))


# ---- ties: the percentile rule keeps a predictable count ---------------------------------


@pytest.mark.parametrize(
    "k, removed", [(20, [6, 8]), (40, [2, 4, 6, 8]), (49, [0, 2, 4, 6, 8]), (60, [0, 2, 4, 6, 8, 9])]
)
def test_dead_filters_are_removed_as_the_count_says(k, removed):
    """5 of 10 filters dead (score 0): the threshold rule kept all 10 at k=20
    and k=40.  Now the count is the same as for distinct scores; among the
    tied dead filters the highest-numbered go first."""
    scores = np.array([0.0, 0.9, 0.0, 0.7, 0.0, 0.5, 0.0, 0.3, 0.0, 0.1])
    keep = select_channels(scores, k)
    assert keep.size == kept_count(10, k)
    assert sorted(set(range(10)) - set(keep.tolist())) == removed


def test_tied_scores_prune_the_count_and_warn():
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    zeros = torch.zeros(10, dtype=torch.float64)  # one image: every std, so every CV, is 0
    flat = {"a": LayerScores(zeros, zeros + 1, zeros, 1, torch.zeros(10, dtype=torch.bool))}
    with pytest.warns(UserWarning, match="all 10 channels score the same"):
        pruned, plan = prune(model, flat, 40, x, ignored_layers=["b"])
    assert pruned.a.out_channels == kept_count(10, 40) == 6
    assert plan["groups"][0]["removed"] == [6, 7, 8, 9]


def test_one_scoring_image_is_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["prune", "--score-images", "1"])
    assert "at least 2" in capsys.readouterr().err


# ---- every number is checked, in the CLI and in the library ------------------------------

NUMERIC_TYPES = {"int", "float", "n_components"}
BAD_VALUES = ["nan", "inf", "-inf", "1e999", "abc", "", "-1"]


def _numeric_options():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, sp in sub.choices.items():
        for action in sp._actions:
            if action.type is not None and getattr(action.type, "__name__", "") in NUMERIC_TYPES:
                yield command, action


def test_no_numeric_option_is_a_bare_int_or_float():
    """A bare ``type=int`` takes -5 and ``type=float`` takes nan: every number has a range."""
    options = list(_numeric_options())
    assert len(options) > 30
    for command, action in options:
        assert action.type not in (int, float), (command, action.option_strings)


@pytest.mark.parametrize("command, option", [(c, a.option_strings[0]) for c, a in _numeric_options()])
def test_numeric_options_refuse_out_of_range_values(command, option, capsys):
    parser = cli.build_parser()
    required = {"export": ["--pruned", "p", "--out", "o.onnx"], "convert-tflite": ["f", "--out", "o.safetensors"]}
    for bad in BAD_VALUES:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, *required.get(command, []), option, bad])
        assert info.value.code == 2, (command, option, bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("ocnna-fast") and "Traceback" not in "\n".join(err), err


@pytest.mark.parametrize("argv", [["--eval-images", "0"], ["--eval-images", "-5"], ["--batch-size", "0"]])
def test_counts_of_zero_or_below_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["evaluate", *argv])
    assert "expected a count >= 1" in capsys.readouterr().err


def test_library_functions_refuse_counts_and_rates_out_of_range(tmp_path):
    from ocnna_fast.data.local import balanced_subset

    labels = np.arange(20) % 5
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="number of images"):
            balanced_subset(labels, bad, 0)
    empty = TensorImages(
        torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), (0,) * 3, (1,) * 3
    )
    with pytest.raises(ValueError, match="no images"):
        evaluate(Net(), empty)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(Net(), _data(), batch_size=0)
    for kw in (
        dict(lr=math.nan),
        dict(lr=math.inf),
        dict(lr=-1.0),
        dict(batch_size=0),
        dict(temperature=math.nan),
        dict(momentum=math.nan),
        dict(seed=-1),
        dict(seed=2**40),
        dict(weight_decay=math.inf),
    ):
        args = dict(epochs=1, lr=0.01, **{k: v for k, v in kw.items() if k != "lr"})
        args["lr"] = kw.get("lr", 0.01)
        with pytest.raises(ValueError):
            distill(Net(), None, _data(), progress=False, **args)


# ---- a diverging run stops, keeping the last good state -----------------------------------


def test_a_non_finite_loss_stops_distillation_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    student = Net()
    calls = {"n": 0}
    real = DISTILL.distillation_loss

    def loss_going_nan(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return out * float("nan") if calls["n"] > 3 else out  # 3 steps = epoch 1 of 12 images in batches of 4

    monkeypatch.setattr(DISTILL, "distillation_loss", loss_going_nan)
    with pytest.raises(TrainingDiverged, match=r"epoch 2 at step 1.*\(after epoch 1\) is kept"):
        distill(student, None, _data(), epochs=3, lr=0.01, batch_size=4, checkpoint_dir=tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1
    for k, v in student.state_dict().items():  # the student is the epoch-1 state, not a NaN one
        assert torch.equal(v, ck["student"][k]), k
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_cli_lr_nan_is_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["finetune", "--lr", "nan"])
    assert "a finite number" in capsys.readouterr().err


# ---- integer weights ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_integer_weights_are_refused_by_name(tmp_path, suffix):
    from safetensors.torch import save_file

    state = {k: (v * 100).long() if v.is_floating_point() else v for k, v in Net().state_dict().items()}
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(ValueError, match=r"10 weights are not floating-point tensors") as info:
        load_weights(Net(), path)
    assert "a.weight (torch.int64)" in str(info.value)


class Payload:
    """Any object torch.load would have to unpickle."""


def test_torchs_advice_to_unpickle_never_reaches_the_user(tmp_path):
    torch.save({"a.weight": Payload()}, tmp_path / "w.pt")
    with pytest.raises(ValueError) as info:
        load_weights(Net(), tmp_path / "w.pt")
    assert "weights_only" not in str(info.value) and "never unpickled" in str(info.value)


# ---- the benchmark: no repeated cells, no mixed resumes ------------------------------------


@pytest.mark.parametrize(
    "criteria, ks, seeds, message",
    [
        (["l1", "l1"], [20], [0], "--criteria lists l1"),
        (["l1"], [20, 20.0], [0], "--k lists 20.0"),
        (["l1"], [20], [0, 0], "--seeds lists 0"),
        (["l1"], [100], [0], "percentile"),
        (["l1"], [20], [-1], "seed"),
    ],
)
def test_bench_refuses_repeated_or_bad_cells(criteria, ks, seeds, message):
    with pytest.raises(ValueError, match=message):
        check_cells(criteria, ks, seeds)


def test_bench_cli_refuses_repeats_before_loading_anything(capsys):
    assert cli.main(["bench", "--criteria", "l1", "l1", "--out", "/nonexistent/never"]) == 2
    assert "more than once" in capsys.readouterr().err


def test_bench_resume_refuses_other_weights_seed_or_size(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    data = JobData(evaluation=_data(8, 2), scoring=_data(8), calibration=_data(8, 1))
    sets = dict(data=data, settings=JobSettings(input_size=8))
    kw = dict(ks=[40], seeds=[0], out=tmp_path, progress=False, latency_repeats=1, config={"arch": "net"})
    run_suite(model, criteria=["l1"], log=lambda *_: None, **sets, **kw)
    other = Net().eval()
    with pytest.raises(ValueError, match=r"--weights/--model"):
        run_suite(other, criteria=["l1"], log=lambda *_: None, **sets, **kw)
    with pytest.raises(ValueError, match=r"--seed \(the images drawn\)"):
        run_suite(model, criteria=["l1"], log=lambda *_: None, **sets, **dict(kw, config={"arch": "net", "seed": 5}))
    with pytest.raises(ValueError, match=r"--latency-repeats"):
        run_suite(model, criteria=["l1"], log=lambda *_: None, **sets, **dict(kw, latency_repeats=2))
    rows = run_suite(model, criteria=["l1", "random"], log=lambda *_: None, **sets, **kw)  # same settings resume
    assert [r["criterion"] for r in rows] == ["l1", "random"]
    path = tmp_path / "results.json"
    sealed = json.loads(path.read_text())
    edited = json.loads(path.read_text())
    edited["rows"][1]["k"] = 50.0  # a plausible value: only the row's digest tells it was changed
    path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"row\(s\) 1 do not match their row_sha256"):
        run_suite(model, criteria=["l1", "random"], log=lambda *_: None, **sets, **kw)
    del edited["rows"][1]  # a deleted row is run again, the other resumed as it was
    path.write_text(json.dumps(edited))
    again = run_suite(model, criteria=["l1", "random"], log=lambda *_: None, **sets, **kw)
    assert again[0] == rows[0] and again[1]["criterion"] == "random"
    assert json.loads(path.read_text())["rows"][0] == sealed["rows"][0]
    legacy = {**sealed, "rows": [{k: v for k, v in r.items() if k != "row_sha256"} for r in sealed["rows"]]}
    legacy["rows"][0]["rpr"] = "0.5"  # files written before rows were sealed are still checked field by field
    path.write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="wrong type"):
        run_suite(model, criteria=["l1"], log=lambda *_: None, **sets, **kw)
    legacy["rows"][0]["rpr"] = sealed["rows"][0]["rpr"]
    legacy["rows"][1]["row_sha256"] = sealed["rows"][1]["row_sha256"]  # some rows sealed, some not: damaged
    path.write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"row\(s\) 0 do not match"):
        run_suite(model, criteria=["l1"], log=lambda *_: None, **sets, **kw)


def test_an_interrupted_bench_says_what_it_kept(tmp_path, capsys, monkeypatch):
    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.bench, "suite", interrupt)
    monkeypatch.setattr(cli.loading, "load_model", lambda *a, **kw: (Net(), "w"))
    assert cli.main(["bench", "--criteria", "l1", "--k", "40", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "finished so far are kept" in err and "results.json" in err


# ---- exports replace nothing until verified -----------------------------------------------


def test_a_failed_verification_changes_nothing_at_out(tmp_path, monkeypatch):
    from ocnna_fast.deploy import export as ex

    model = Net().eval()
    images = torch.randn(4, 3, 8, 8)
    out = tmp_path / "m.pt"
    first = ex.export_verified({"pruned": (model, out)}, "torchscript", images, 8)
    assert first["pruned"]["verification"]["ok"] and first["pruned"]["path"] == str(out)
    before = out.read_bytes()
    other = Net().eval()
    real_verify = ex.verify

    def mismatching(m, path, *a, **kw):
        real_verify(m, path, *a, **kw)
        raise ex.ExportMismatch(f"{path} differs")

    monkeypatch.setattr(ex, "verify", mismatching)
    with pytest.raises(ex.ExportMismatch, match="the export of"):
        ex.export_verified({"pruned": (other, out), "base": (other, tmp_path / "m.base.pt")}, "torchscript", images, 8)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary or half-published file


def test_export_to_a_missing_folder_fails_at_once(tmp_path, capsys):
    assert cli.main(["export", "--pruned", str(tmp_path), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_model_that_cannot_be_traced_is_named(tmp_path):
    from ocnna_fast.deploy import export as ex

    try:
        ex.require_deploy()
    except ImportError as exc:
        pytest.skip(str(exc))

    class Branchy(Net):
        def forward(self, x):
            y = super().forward(x)
            return y if bool(y.sum() > 0) else -y  # control flow on the data

    with pytest.raises(ValueError, match="cannot be traced; try --format torchscript"):
        ex.export_model(Branchy().eval(), tmp_path / "b.onnx", "onnx", 8)
    assert list(tmp_path.iterdir()) == []


# ---- devices that cannot hold the weights; restore errors never hide the cause -------------


def test_meta_and_missing_devices_are_refused_before_the_model_moves():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 8, 8)
    for device in ("meta", "foo", "cuda:7" if not torch.cuda.is_available() else "cuda:99"):
        with pytest.raises(ValueError, match="device"):
            score(model, [x], device=device)
        with pytest.raises(ValueError, match="device"):
            recalibrate_batchnorm(model, [x], device=device)
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k


def test_a_restore_error_never_hides_the_first_one(monkeypatch):
    model = Net()
    ran = {"forward": False}

    def broken_forward(x):
        ran["forward"] = True
        raise RuntimeError("the first failure")

    real_train = model.bn.train

    def train(mode=True):  # fails only while restoring, after the forward failed
        if ran["forward"]:
            raise OSError("restore failed")
        return real_train(mode)

    monkeypatch.setattr(model.a, "forward", broken_forward)
    monkeypatch.setattr(model.bn, "train", train)
    with pytest.raises(RuntimeError, match="the first failure") as info:
        recalibrate_batchnorm(model, [torch.randn(2, 3, 8, 8)])
    assert any("restoring the model afterwards failed too" in n for n in info.value.__notes__)

    monkeypatch.setattr(model.bn, "train", real_train)
    run_cls = sys.modules["ocnna_fast.scoring.scorer"]._ScoringRun
    real_restore = run_cls._restore

    def restore_then_fail(self):
        real_restore(self)
        if ran["forward"]:
            raise OSError("restore failed")

    monkeypatch.setattr(run_cls, "_restore", restore_then_fail)
    with pytest.raises(RuntimeError, match="the first failure") as info:
        score(model, [torch.randn(2, 3, 8, 8)], overlap=False)
    assert any("restoring the model afterwards failed too" in n for n in info.value.__notes__)


# ---- one writer per --out; killed runs leave nothing for good --------------------------------


def test_a_second_run_into_the_same_out_is_refused_and_stale_staging_is_removed(tmp_path):
    stale = tmp_path / ".staging-999999999"
    stale.mkdir()
    (stale / "report.json").write_text("{}")
    with locked(tmp_path):
        assert not stale.exists()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            with locked(tmp_path):
                pass
    with locked(tmp_path):  # released when the first run ends
        pass


# ---- readable errors ------------------------------------------------------------------------


def test_an_unused_conv_is_refused_by_name():
    class Unused(Net):
        def __init__(self):
            super().__init__()
            self.side = nn.Conv2d(10, 4, 1)

        def forward(self, x):
            h = torch.relu(self.bn(self.a(x)))
            self.side(h)  # computed, never used
            return self.fc(torch.relu(self.b(h)).mean((2, 3)))

    model = Unused().eval()
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\['side'\] compute outputs the model never uses"):
        prune(model, score(model, [x]), 40, x[:1])


def test_a_factory_that_needs_arguments_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "needs_args_mod.py").write_text("from torch import nn\ndef build(n):\n    return nn.Linear(n, n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["score", "--model", "needs_args_mod:build", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "callable with the arguments the spec gives" in err and len(err.strip().splitlines()) == 1
    sys.modules.pop("needs_args_mod", None)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, workers):
    from PIL import Image

    from ocnna_fast.data.imagefolder import FolderImages, UnreadableImage

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "1.png").write_bytes(b"not a png")
    data = FolderImages(tmp_path, 8, (0.5,) * 3, (0.25,) * 3, workers=workers)
    with pytest.raises(UnreadableImage) as info:
        list(data.batches(2))
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"cannot read the image {tmp_path / 'b' / '1.png'}")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"garbage" * 20, "no TFL3 identifier"),
        (b"\x00\x00\x00\x00TFL3" + b"\xff" * 40, "damaged|no subgraph"),
    ],
)
def test_convert_tflite_refuses_bad_files_in_one_line(tmp_path, content, message, capsys):
    pytest.importorskip("tflite")
    (tmp_path / "m.tflite").write_bytes(content)
    assert cli.main(["convert-tflite", str(tmp_path / "m.tflite"), "--out", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("out, message", [("w.weights", "NAME.safetensors"), ("no/w.safetensors", "does not exist")])
def test_convert_tflite_refuses_outputs_it_cannot_write_well(tmp_path, out, message, capsys):
    (tmp_path / "m.tflite").write_bytes(b"x")
    assert cli.main(["convert-tflite", str(tmp_path / "m.tflite"), "--out", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err


def test_a_truncated_real_tflite_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("tflite")
    from ocnna_fast.data.places import find_data

    try:
        real = find_data("mobilenet-imagenet-tflite-coral/mobilenet_v1_0.25_128_quant.tflite")
    except FileNotFoundError as exc:
        pytest.skip(f"optional data absent: {exc}")
    raw = real.read_bytes()
    for cut in (len(raw) // 7, len(raw) // 2):
        (tmp_path / "m.tflite").write_bytes(raw[:cut])
        assert cli.main(["convert-tflite", str(tmp_path / "m.tflite"), "--out", str(tmp_path / "w.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(tmp_path / "m.tflite") in err[0], err


def test_device_options_are_checked_by_the_parser(capsys):
    for bad in ("foo", "meta") + (() if torch.cuda.is_available() else ("cuda",)):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["score", "--device", bad])
        assert "device" in capsys.readouterr().err


def test_a_hash_of_the_plan_is_what_the_digest_covers(user_pruned):
    folder, _, _ = user_pruned
    doc = json.loads((folder / "plan.json").read_text())
    body = {k: v for k, v in doc.items() if k != "plan_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == doc["plan_sha256"]


# ---- fuzz: every file the tool reads; runs interrupted at random points -------------------


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(raw: bytes, pos: int, flip: int, truncate: bool) -> bytes:
    b = bytearray(raw)
    if truncate:
        return bytes(b[: pos % len(b)])
    b[pos % len(b)] ^= flip
    return bytes(b)


@pytest.fixture(scope="module")
def saved_net(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 3, 8, 8)
    pruned, plan = prune(model, score(model, [x]), 40, x[:1])
    folder = tmp_path_factory.mktemp("saved") / "pruned"
    save_pruned(folder, pruned, plan, extra={"arch": "resnet20", "num_classes": 3})
    return folder, pruned


@FUZZ
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_plan_json(tmp_path_factory, saved_net, pos, flip, truncate):
    folder, pruned = saved_net
    d = tmp_path_factory.mktemp("fuzzplan")
    raw = (folder / "plan.json").read_bytes()
    (d / "plan.json").write_bytes(_mutate(raw, pos, flip, truncate))
    (d / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    try:
        got = load_pruned(d, base_model=Net())
    except ValueError:
        return
    assert json.loads((d / "plan.json").read_bytes()) == json.loads(raw)  # only a change JSON does not see loads
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(got(x), pruned(x))


@FUZZ
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_weights_file(tmp_path_factory, pos, flip, truncate):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("fuzzw")
    torch.manual_seed(0)
    save_file(Net().state_dict(), str(d / "w.safetensors"))
    raw = (d / "w.safetensors").read_bytes()
    (d / "w.safetensors").write_bytes(_mutate(raw, pos, flip, truncate))
    try:
        model = load_weights(Net(), d / "w.safetensors")
    except ValueError:
        return
    # a changed value may load, exactly as the file holds it; a changed type never loads
    from safetensors.torch import load_file

    held = load_file(str(d / "w.safetensors"))
    state = model.state_dict()
    assert all(state[k].dtype == v.dtype for k, v in held.items())
    # bit for bit: a flipped bit may make a NaN, which loads as the file holds it
    assert all(state[k].numpy().tobytes() == v.numpy().tobytes() for k, v in held.items())


@pytest.fixture(scope="module")
def bench_reference(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    out = tmp_path_factory.mktemp("benchref")
    rows = run_suite(model, log=lambda *_: None, out=out, **_BENCH)
    return model, rows, (out / "results.json").read_bytes()


_BENCH = dict(
    data=JobData(evaluation=_data(8, 2), scoring=_data(8), calibration=_data(8, 1)),
    settings=JobSettings(input_size=8),
    config={"arch": "net"},
    criteria=["l1", "random"],
    ks=[20, 40],
    seeds=[0, 1],
    progress=False,
    latency_repeats=1,
)
_MEASURED = ("criterion", "k", "seed", "rpr", "macs_ratio", "acc_surgery", "acc_bn")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_at=st.integers(1, 6))
def test_fuzz_bench_interrupted_at_any_cell_resumes_to_the_same_rows(tmp_path_factory, bench_reference, stop_at):
    model, want, _ = bench_reference
    out = tmp_path_factory.mktemp("benchstop")
    from ocnna_fast.job.pipeline import PruneJob

    real = PruneJob.surgery
    calls = {"n": 0}

    def surgery_then_stop(self):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(self)

    PruneJob.surgery = surgery_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_suite(model, log=lambda *_: None, out=out, **_BENCH)
    finally:
        PruneJob.surgery = real
    kept = json.loads((out / "results.json").read_text())["rows"] if stop_at > 1 else []
    assert len(kept) == stop_at - 1  # whole rows only
    got = run_suite(model, log=lambda *_: None, out=out, **_BENCH)
    assert [[r[f] for f in _MEASURED] for r in got] == [[r[f] for f in _MEASURED] for r in want]


@FUZZ
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_results_json(tmp_path_factory, bench_reference, pos, flip, truncate):
    model, want, raw = bench_reference
    out = tmp_path_factory.mktemp("fuzzres")
    (out / "results.json").write_bytes(_mutate(raw, pos, flip, truncate))
    try:
        got = run_suite(model, log=lambda *_: None, out=out, **_BENCH)
    except ValueError:
        return
    assert json.loads((out / "results.json").read_bytes())["config"] == json.loads(raw)["config"]
    assert len(got) == len(want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_image_files(tmp_path_factory, pos, flip, truncate):
    from PIL import Image

    from ocnna_fast.data.imagefolder import FolderImages, UnreadableImage

    root = tmp_path_factory.mktemp("fuzzimg")
    for c in ("a", "b"):
        (root / c).mkdir()
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(root / c / "0.png")
    raw = (root / "b" / "0.png").read_bytes()
    (root / "b" / "0.png").write_bytes(_mutate(raw, pos, flip, truncate))
    data = FolderImages(root, 8, (0.5,) * 3, (0.25,) * 3)
    try:
        batches = list(data.batches(2))
    except UnreadableImage as exc:
        assert str(root / "b" / "0.png") in str(exc) and len(str(exc).splitlines()) == 1
        return
    assert batches[0][0].shape == (2, 3, 8, 8)


@FUZZ
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_tflite_file(tmp_path_factory, pos, flip, truncate):
    pytest.importorskip("tflite")
    from ocnna_fast.data.places import find_data
    from ocnna_fast.models.tflite_convert import read_convs

    try:
        real = find_data("mobilenet-imagenet-tflite-coral/mobilenet_v1_0.25_128_quant.tflite")
    except FileNotFoundError as exc:
        pytest.skip(f"optional data absent: {exc}")
    d = tmp_path_factory.mktemp("fuzztfl")
    (d / "m.tflite").write_bytes(_mutate(real.read_bytes(), pos, flip, truncate))
    try:
        read_convs(d / "m.tflite")
    except ValueError as exc:
        assert len(str(exc).splitlines()) == 1
