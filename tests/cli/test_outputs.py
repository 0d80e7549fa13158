"""What a command may write over (docs/reliability.md, "Outputs"): never
another kind of command's folder or file, never one of its own inputs; an
export is all or nothing; a finished run's folder holds that run's files only."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from ocnna_fast._util.atomic import replace_all
from ocnna_fast.cli import main
from ocnna_fast.cli.outdir import OWNER, out_dir, producer, publish
from ocnna_fast.deploy import export as ex


def _digests(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory, data_dir):
    """A finished `prune` folder (OCNNA's rule, so it holds scores.safetensors)."""
    out = tmp_path_factory.mktemp("run") / "R"
    argv = ["prune", "--arch", "resnet20", "--k", "40", "--score-images", "16", "--eval-images", "16"]
    argv += ["--bn-images", "16", "--finetune-epochs", "0", "--latency-repeats", "0", "--no-progress"]
    assert main(argv + ["--out", str(out), "--data-dir", str(data_dir)]) == 0
    return out


@pytest.mark.parametrize(
    "argv, names",
    [
        # the hostile pass's two cases: a TorchScript file over the pruned weights, a fine-tuned model into pruned/
        (["export", "--format", "torchscript", "--out", "{R}/pruned/model.safetensors"], "NAME.pt"),
        (["export", "--format", "torchscript", "--out", "{R}/pruned/model.pt"], "pruned model"),
        (["export", "--format", "onnx", "--out", "{R}/scores.onnx", "--base"], None),  # allowed: a new file
        (["export", "--format", "onnx", "--out", "{R}/m.pt"], "NAME.onnx"),
        (
            ["finetune", "--arch", "resnet20", "--epochs", "1", "--train-images", "8", "--out", "{R}/pruned"],
            "plan.json",
        ),
        (
            ["finetune", "--arch", "resnet20", "--epochs", "1", "--train-images", "8", "--out", "{R}"],
            "ocnna-fast prune",
        ),
        (["score", "--arch", "resnet20", "--images", "4", "--out", "{R}"], "ocnna-fast prune"),
        (
            ["bench", "--arch", "resnet20", "--k", "40", "--criteria", "l1", "--seeds", "0", "--out", "{R}/pruned"],
            "plan",
        ),
    ],
)
def test_no_command_writes_into_another_commands_output(prune_run, tmp_path, data_dir, capsys, argv, names):
    run = tmp_path / "R"
    shutil.copytree(prune_run, run)
    before = _digests(run)
    argv = [a.replace("{R}", str(run)) for a in argv] + ["--data-dir", str(data_dir)]
    if argv[0] == "export":
        argv += ["--pruned", str(run / "pruned"), "--verify-images", "8"]
    code = main(argv)
    err = capsys.readouterr().err
    if names is None:  # a new file beside the run's outputs, which the run's files do not include
        if code == 0:
            assert {k: v for k, v in _digests(run).items() if k in before} == before
        return
    assert code == 2 and names in err and len(err.strip().splitlines()) == 1, err
    assert _digests(run) == before  # nothing of the pruned run changed


def test_a_command_never_writes_over_its_own_input(tmp_path, data_dir, capsys):
    weights = data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "model.safetensors").write_bytes(b"not really")  # as if an earlier fine-tuning had written it
    (ft / OWNER).write_text("finetune\n")
    with pytest.raises(ValueError, match="an input of this command"):
        out_dir(ft, "finetune", inputs=[ft / "model.safetensors"])
    with pytest.raises(ValueError, match="an input of this command"):  # inside an output folder it replaces
        out_dir(tmp_path / "p", "prune", inputs=[tmp_path / "p" / "pruned" / "w.th"])
    assert out_dir(tmp_path / "q", "finetune", inputs=[weights]) == tmp_path / "q"  # elsewhere: fine
    assert producer(tmp_path / "q") == "finetune"


LEGACY = [  # what each command wrote before folders were marked, reduced to what tells it
    ("bench", {"results.json": {"config": {}, "rows": []}}),
    ("score", {"summary.json": {"n_components": 1, "layers": {}}, "scores.safetensors": "x"}),
    ("finetune", {"model.safetensors": "x", "report.json": {"weights_out": "model.safetensors", "history": []}}),
    ("prune", {"allocation-losses.json": {"fingerprint": "f", "losses": []}}),
]


def _fill(folder, files):
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("command,files", LEGACY, ids=[c for c, _ in LEGACY])
def test_legacy_folders_are_told_by_their_files(tmp_path, command, files):
    """Folders written before they were marked: what only one command writes names it."""
    folder = tmp_path / command
    _fill(folder, files)
    assert producer(folder) == command
    other = "bench" if command == "prune" else "prune"
    with pytest.raises(ValueError, match=f"`ocnna-fast {command}` .*{next(iter(files))}"):
        out_dir(folder, other)
    assert out_dir(folder, command) == folder  # its own command goes on (a bench suite resumes)


@pytest.mark.parametrize(
    "command,name",
    [("finetune", "model.safetensors"), ("score", "summary.json"), ("bench", "results.json"), ("prune", "report.json")],
)
def test_a_users_own_file_of_an_output_name_is_never_replaced(tmp_path, command, name):
    """An unmarked folder whose file only shares a name with an output (the user's
    own weights, a summary of theirs) is not taken as the command's: refused, kept."""
    folder = tmp_path / "mine"
    _fill(folder, {name: '{"the user\'s": "own"}', "notes.txt": "kept"})
    before = _digests(folder)
    assert producer(folder) is None
    with pytest.raises(ValueError, match=f"holds {name}, which no ocnna-fast run is known to have written"):
        out_dir(folder, command)
    assert _digests(folder) == before
    assert out_dir(tmp_path / "empty", command) == tmp_path / "empty"  # a folder without such files is fine


def test_export_extension_agrees_with_format(tmp_path):
    from ocnna_fast.cli.export import check_out

    for name, fmt in [("m.onnx", "torchscript"), ("m.pt", "onnx"), ("m.safetensors", "torchscript")]:
        with pytest.raises(ValueError, match="is named NAME"):
            check_out(tmp_path / name, fmt)
    for name, fmt in [("m.onnx", "onnx"), ("m.pt", "torchscript"), ("m.pth", "torchscript")]:
        check_out(tmp_path / name, fmt)


def test_export_does_not_replace_a_file_it_did_not_write(tmp_path):
    from ocnna_fast.cli.export import check_out

    (tmp_path / "m.pt").write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match="did not write"):
        check_out(tmp_path / "m.pt", "torchscript")
    # an earlier export's files, named by its report, are replaced
    report = {"command": "export", "pruned": {"path": str(tmp_path / "m.pt")}}
    (tmp_path / "m.pt.json").write_text(json.dumps(report))
    check_out(tmp_path / "m.pt", "torchscript")
    (tmp_path / "m.base.pt").write_bytes(b"not named by the report")
    with pytest.raises(ValueError, match="m.base.pt"):
        check_out(tmp_path / "m.pt", "torchscript")


class _Tiny(torch.nn.Module):
    def __init__(self, bias=0.0):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.conv.bias.fill_(bias)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_a_failed_export_replaces_nothing(tmp_path):
    """The hostile pass: a good export in place, its report made unwritable (a
    folder in its place); the second export fails and leaves every file as it was."""
    images = torch.randn(4, 3, 8, 8)
    out = tmp_path / "m.pt"

    def report_for(files):
        return {tmp_path / "m.pt.json": json.dumps({"command": "export", **files})}

    ex.export_verified({"pruned": (_Tiny(0.0), out)}, "torchscript", images, 8, companions=report_for)
    (tmp_path / "m.pt.json").unlink()
    (tmp_path / "m.pt.json").mkdir()  # cannot be written over
    before = _digests(tmp_path)
    with pytest.raises(IsADirectoryError, match="m.pt.json"):
        ex.export_verified({"pruned": (_Tiny(1.0), out)}, "torchscript", images, 8, companions=report_for)
    assert _digests(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]  # no temporary file left


def test_replace_all_puts_back_what_it_moved_when_a_move_fails(tmp_path, monkeypatch):
    import os

    targets = [tmp_path / n for n in ("a", "b", "c")]
    for t in targets[:2]:
        t.write_text(f"old {t.name}")
    staged = {}
    for t in targets:
        s = tmp_path / f".{t.name}.new"
        s.write_text(f"new {t.name}")
        staged[t] = s
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if Path(dst) == targets[2]:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_all(staged)
    monkeypatch.setattr(os, "replace", real)
    assert [t.read_text() for t in targets[:2]] == ["old a", "old b"] and not targets[2].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.new", "a", "b"]  # no .previous file left


def test_a_finished_run_holds_only_its_own_files(tmp_path):
    """An OCNNA run's scores and allocation memo, then an L1 run into the same folder."""
    out = tmp_path / "X"
    out_dir(out, "prune")
    for name in ("scores.safetensors", "allocation-losses.json", "report.json"):
        (out / name).write_text("earlier run")
    (out / "distill").mkdir()
    (out / "notes.txt").write_text("the user's")  # not a prune output: left alone
    stage = out / ".staging-1"
    stage.mkdir()
    for name in ("report.json", "report.md"):
        (stage / name).write_text("this run")
    (stage / "pruned").mkdir()
    publish(stage, out, ["pruned", "report.json", "report.md"], command="prune")
    assert sorted(p.name for p in out.iterdir() if p.name != ".staging-1") == [
        OWNER,
        "notes.txt",
        "pruned",
        "report.json",
        "report.md",
    ]
    assert (out / "report.json").read_text() == "this run"
