"""The ocnna-fast command line, end to end on a tiny subset of the shipped data."""

from __future__ import annotations

import json

import pytest

from ocnna_fast.cli import main
from ocnna_fast.surgery.plans import load_pruned

FIELDS = [
    "arch",
    "dataset",
    "k",
    "n_components",
    "base_accuracy",
    "pruned_accuracy_after_surgery",
    "bn_images",
    "pruned_accuracy_before_finetune",
    "pruned_accuracy",
    "accuracy_drop",
    "base_params",
    "pruned_params",
    "rpr",
    "base_macs",
    "pruned_macs",
    "macs_ratio",
    "scoring_seconds",
    "finetune_seconds",
]


def test_prune_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "prune",
            "--arch",
            "resnet20",
            "--k",
            "40",
            "--n-components",
            "0.9",
            "--criterion",
            "ocnna-rms",
            "--score-images",
            "32",
            "--eval-images",
            "40",
            "--train-images",
            "64",
            "--finetune-epochs",
            "1",
            "--batch-size",
            "32",
            "--bn-images",
            "48",
            "--latency-repeats",
            "2",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]  # base vs pruned, eager always, ONNX Runtime with the deploy extra
    for key in ("eager_b1", "eager_b64"):
        assert lat["speedup"][key] == pytest.approx(lat["base"][key]["median"] / lat["pruned"][key]["median"])
    assert ("onnxruntime_b1" in lat["speedup"]) != ("onnxruntime" in lat)
    assert "## Latency on this CPU" in (out / "report.md").read_text()
    for f in FIELDS:
        assert f in report, f
    assert report["bn_images"] == 48 and report["criterion"] == "ocnna-rms"
    assert 0 < report["rpr"] < 1 and 0 < report["macs_ratio"] < 1
    assert report["pruned_params"] < report["base_params"]
    assert report["accuracy_drop"] == pytest.approx(report["base_accuracy"] - report["pruned_accuracy"])
    md = (out / "report.md").read_text()
    assert (
        f"| parameters | {report['base_params']:,} | {report['pruned_params']:,} | {100 * report['rpr']:.1f}% |" in md
    )
    assert "To run it again" in md and "ocnna-fast prune --arch resnet20" in md
    assert report["settings"]["command"].startswith("ocnna-fast prune --arch resnet20")
    model = load_pruned(out / "pruned")
    assert sum(p.numel() for p in model.parameters()) == report["pruned_params"]
    # evaluate reads the pruned directory back
    assert (
        main(
            [
                "evaluate",
                "--pruned",
                str(out / "pruned"),
                "--eval-images",
                "40",
                "--data-dir",
                str(data_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["accuracy"] == pytest.approx(report["pruned_accuracy"])


def test_score_command(tmp_path, data_dir):
    from ocnna_fast import Scores

    assert (
        main(
            [
                "score",
                "--arch",
                "resnet20",
                "--images",
                "16",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    s = Scores.load(tmp_path / "scores.safetensors")
    assert len(s) == 19 and all(ls.count == 16 for ls in s.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--arch", "resnet1000", "--k", "40"], "unknown --arch"),
        (["prune", "--k", "100"], "--k"),
        (["prune", "--k", "-5"], "--k"),
        (["prune", "--arch", "densenet40", "--k", "40"], "pass --weights"),
        (["prune", "--bn-images", "-1"], "--bn-images"),
        (["prune", "--arch", "resnet20"], "say how much to prune: --target macs=0.5"),
        (["prune", "--paper", "--criterion", "l1"], "--paper fixes --criterion"),
    ],
)
def test_bad_arguments(argv, message, tmp_path, data_dir, capsys):
    try:  # the parser exits 2 with the message on stderr; a command returns 2 after one line
        rc = main(argv + ["--data-dir", str(data_dir), "--out", str(tmp_path)])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2 and message in capsys.readouterr().err


def test_missing_data_is_explained(tmp_path, capsys, monkeypatch):
    from ocnna_fast.data import places as datapaths

    monkeypatch.setattr(datapaths, "checkout_data_dir", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "score",
            "--arch",
            "resnet20",
            "--images",
            "4",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "OCNNA_DATA_DIR" in err and "ocnna-fast fetch resnet20" in err and str(tmp_path / "nowhere") in err
    rc = main(
        [
            "prune",
            "--arch",
            "resnet20",
            "--k",
            "40",
            "--dataset",
            "cifar10",
            "--weights",
            str(datapaths.Path(__file__).parents[2] / "data" / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"),
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 2 and "ocnna-fast fetch cifar10" in capsys.readouterr().err


def _fails(argv, capsys) -> str:
    """Runs the command, expects the one-line failure (exit 2), returns what it printed."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cifar100_needs_its_own_weights(tmp_path, data_dir, capsys):
    assert "are for CIFAR-10; for --dataset cifar100" in _fails(
        [
            "score",
            "--arch",
            "resnet20",
            "--dataset",
            "cifar100",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
        ],
        capsys,
    )


def test_lossless_cifar10_through_the_cli(tmp_path, data_dir, monkeypatch, capsys):
    """--dataset cifar10 reads torchvision's layout from the data places, and
    the report names the data set."""
    pytest.importorskip("torchvision")
    import pickle

    import numpy as np
    import torchvision.datasets.cifar as tv_cifar

    from ocnna_fast.data.local import foolbox_samples

    x, y = foolbox_samples("cifar10", data_dir)  # 20 real lossless test images in torchvision's layout
    folder = tmp_path / "mine" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = x.reshape(len(x), -1).numpy()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, "labels": y.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5 sums are of the real files
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    assert (
        main(
            [
                "evaluate",
                "--arch",
                "resnet20",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path / "mine"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dataset"].startswith("cifar10: lossless") and report["images"] == 20
    assert report["accuracy"] == 100.0  # PROVENANCE: ResNet-20 gets all 20 right
    assert np.array_equal(flat[0], x[0].reshape(-1).numpy())


TINY = [
    "--arch",
    "resnet20",
    "--k",
    "40",
    "--score-images",
    "16",
    "--eval-images",
    "16",
    "--train-images",
    "16",
    "--finetune-epochs",
    "1",
    "--batch-size",
    "16",
    "--bn-images",
    "16",
    "--latency-repeats",
    "0",
    "--no-progress",
]


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: (d / "out").write_text("a file"), "not a folder"),
        (lambda d: (d / "w.th").write_bytes(b"\x80garbage"), "cannot read weights"),
        (lambda d: (d / "w.safetensors").write_bytes(b"garbage"), "cannot read weights"),
    ],
)
def test_expected_failures_are_one_line(make_bad, message, tmp_path, data_dir, capsys):
    """A file where --out should go, garbage weights: exit 2 and one line, no traceback."""
    make_bad(tmp_path)
    argv = ["prune", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path / "out")]
    for name in ("w.th", "w.safetensors"):
        if (tmp_path / name).exists():
            argv += ["--weights", str(tmp_path / name)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_weights_of_another_architecture_are_one_line(tmp_path, data_dir, capsys):
    w = data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th"
    assert (
        main(
            [
                "evaluate",
                "--arch",
                "resnet56",
                "--weights",
                str(w),
                "--eval-images",
                "8",
                "--data-dir",
                str(data_dir),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "do not fit" in err and "Traceback" not in err


def test_interrupted_prune_leaves_the_old_outputs_whole(tmp_path, data_dir, capsys, monkeypatch):
    """Ctrl-C during distillation: the folder still holds the previous run's
    scores, model and report, all of one run; nothing half-written is left."""
    from ocnna_fast.job.pipeline import PruneJob

    out = tmp_path / "run"
    assert main(["prune", *TINY, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    plan_before = (out / "pruned" / "plan.json").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PruneJob, "distill", interrupted)
    assert (
        main(
            ["prune", *TINY, "--k", "60", "--n-components", "0.9", "--data-dir", str(data_dir), "--out", str(out)]
            + ["--overwrite"]
        )
        == 130
    )
    assert "interrupted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "pruned" / "plan.json").read_bytes() == plan_before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    load_pruned(out / "pruned")  # still a consistent pair


def test_rerun_into_the_same_out_with_other_settings(tmp_path, data_dir, capsys):
    """A finished run is never replaced silently: a second run into its
    folder is refused in one line naming --overwrite, and with it starts
    afresh (a finished run leaves no distillation checkpoint to resume) and
    replaces the first's outputs whole: plan and weights agree."""
    out = tmp_path / "run"
    assert main(["prune", *TINY, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert not (out / "distill").exists() and not list(out.glob("*.ckpt"))
    before = (out / "report.json").read_bytes()
    again = ["prune", *TINY, "--k", "60", "--data-dir", str(data_dir), "--out", str(out)]
    err = _fails(again, capsys)
    assert "holds a finished run" in err and "--overwrite" in err
    assert (out / "report.json").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["k"] == 60
    load_pruned(out / "pruned")  # a consistent pair


def test_dataset_and_model_sizes_must_fit(tmp_path, capsys):
    argv = ["prune", "--arch", "resnet20", "--k", "40", "--dataset", "imagenet-sample", "--out", str(tmp_path)]
    assert "ImageNet data sets are for ImageNet models" in _fails(argv, capsys)
    argv = ["prune", "--arch", "mobilenet_v1_075_imagenet", "--k", "40", "--out", str(tmp_path)]
    assert "use --dataset imagenet-sample" in _fails(argv, capsys)


def test_report_md_reads_as_sentences_and_flags_noisy_latency():
    from ocnna_fast.cli.output import prune_markdown

    fig = lambda med, q25, q75: {"median": med, "q25": q25, "q75": q75, "repeats": 5}  # noqa: E731
    report = {
        "dataset": "cifar10-jpeg",
        "eval_images": 100,
        "base_weights": "w.th",
        "base_accuracy": 83.2,
        "pruned_accuracy_after_surgery": 10.0,
        "bn_images": 50,
        "recalibration": "batchnorm",
        "pruned_accuracy_before_finetune": 60.0,
        "pruned_accuracy": 80.0,
        "finetune_epochs": 1,
        "accuracy_drop": 3.2,
        "base_params": 1000,
        "pruned_params": 400,
        "rpr": 0.4,
        "base_macs": 2000,
        "pruned_macs": 1000,
        "macs_ratio": 0.5,
        "scoring_seconds": 1.0,
        "finetune_seconds": 2.0,
        "settings": {"training_images": 10, "seed": 0, "command": "ocnna-fast prune --k 40"},
        "latency": {
            "base": {"threads": 2, "eager_b1": fig(10, 9, 11), "eager_b64": fig(100, 50, 150)},
            "pruned": {"threads": 2, "eager_b1": fig(5, 4.9, 5.1), "eager_b64": fig(60, 59, 61)},
            "speedup": {"eager_b1": 2.0, "eager_b64": 100 / 60},
        },
    }
    md = prune_markdown(report, "Pruned")
    assert "| after 1 epoch of distillation | 80.00% |" in md
    assert "| BatchNorm re-estimated on 50 training images | 60.00% |" in md
    assert "| parameters | 1,000 | 400 | 40.0% |" in md and "| MACs per image | 2,000 | 1,000 | 50.0% |" in md
    assert "```bash\nocnna-fast prune --k 40\n```" in md
    assert "| eager, batch 1 | 5 | 10.00 (9.00-11.00) | 5.00 (4.90-5.10) | 2.00x | ok |" in md
    assert "| eager, batch 64 | 5 |" in md and "**spread too wide**" in md.split("eager, batch 64")[1].split("\n")[0]


@pytest.mark.parametrize("command", ["prune", "bench"])
def test_cli_defaults_are_the_python_defaults(command):
    """A budget job from the command line and one from ``JobSettings()``
    choose widths alike: the options they share default to the same values."""
    from ocnna_fast.cli import build_parser
    from ocnna_fast.cli.budget_options import fill_budget_defaults
    from ocnna_fast.job.pipeline import JobSettings

    args = build_parser().parse_args([command, "--arch", "resnet20", "--target", "macs=0.5"])
    assert fill_budget_defaults(args) == []  # none given: every default filled in after parsing
    python = JobSettings()
    shared = {
        "allocation": "allocation",
        "round_to": "round_to",
        "max_prune": "max_prune",
        "sensitivity_images": "sensitivity_images",
        "refine_steps": "refine_steps",
        "cap_search": "cap_search",
        "folded_correction": "folded",
    }
    present = [option for option in shared if hasattr(args, option)]  # bench has no allocation options
    assert len(present) >= 4
    for option in present:
        assert getattr(args, option) == getattr(python, shared[option]), option


def test_bench_records_the_command_that_ran_it(tmp_path, monkeypatch):
    """``command.txt``, which BENCHMARKS.md quotes above a suite's tables,
    is the command as run, quoted so a shell runs it again."""
    import shlex

    from torch import nn

    from ocnna_fast import cli

    monkeypatch.setattr(cli.bench, "suite", lambda *a, **kw: [])
    monkeypatch.setattr(cli.loading, "load_model", lambda *a, **kw: (nn.Conv2d(3, 4, 3), "w"))
    out = tmp_path / "a suite"
    argv = ["bench", "--criteria", "l1", "--k", "40", "--out", str(out)]
    assert cli.main(argv) == 0
    assert shlex.split((out / "command.txt").read_text()) == ["ocnna-fast", *argv]


def test_prune_with_refit_saves_a_model_that_loads_and_scores_the_same(tmp_path, data_dir, capsys):
    """--refit on a BatchNorm model: the report names it, the saved folder
    loads into the architecture (no bias added) and evaluates to the
    accuracy the job reported; without it and without distillation the job
    points to it."""
    common = ["prune", "--arch", "resnet20", "--k", "40", "--criterion", "l1", "--score-images", "32"]
    common += ["--eval-images", "40", "--bn-images", "48", "--batch-size", "16", "--finetune-epochs", "0"]
    common += ["--latency-repeats", "0", "--data-dir", str(data_dir), "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert "--refit" in capsys.readouterr().out
    out = tmp_path / "refit"
    assert main(common + ["--refit", "--out", str(out)]) == 0
    assert "layers refitted by least squares" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["recalibration"] == "batchnorm+refit"
    assert "BatchNorm re-estimated and layers refitted" in (out / "report.md").read_text()
    args = ["evaluate", "--pruned", str(out / "pruned"), "--eval-images", "40", "--data-dir", str(data_dir)]
    assert main(args + ["--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(report["pruned_accuracy_before_finetune"])


@pytest.mark.parametrize(
    "flags, k, criterion, scope",
    [
        (["--paper"], 40.0, "ocnna", "full"),  # the paper's rule exactly
        (["--k", "30"], 30.0, "ocnna-rms", "inner"),  # the measured best scope for one share everywhere
        (["--k", "30", "--scope", "full", "--criterion", "l1"], 30.0, "l1", "full"),  # what is given stays
        (["--target", "macs=0.5"], None, "ocnna-rms", "full"),  # the allocation chooses every width
    ],
)
def test_prune_fills_in_the_rule_from_the_measured_defaults(flags, k, criterion, scope):
    from ocnna_fast.cli import build_parser
    from ocnna_fast.cli.prune import resolve_rule
    from ocnna_fast.job.pipeline import JobSettings
    from ocnna_fast.surgery.prune import prune as surgery_prune

    args = build_parser().parse_args(["prune", "--arch", "resnet20", *flags])
    resolve_rule(args)
    assert (args.k, args.criterion, args.scope) == (k, criterion, scope)
    # Python's defaults are the command line's
    assert JobSettings(target="macs=0.5").criterion == "ocnna-rms" == surgery_prune.__kwdefaults__["criterion"]


def test_prune_without_a_rule_is_one_line_and_paper_excludes_k(capsys):
    from ocnna_fast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--paper", "--k", "30"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, folder",
    [
        (["--arch", "resnet56", "--target", "macs=0.5"], "runs/resnet56-macs0.5"),
        (["--arch", "resnet20", "--k", "30"], "runs/resnet20-k30"),
        (["--arch", "resnet20", "--paper"], "runs/resnet20-paper"),
        (
            ["--model", "torchvision.models:resnet18(num_classes=10)", "--target", "params=0.3"],
            "runs/resnet18-params0.3",
        ),
    ],
)
def test_prune_names_its_output_folder_for_the_job(flags, folder):
    from ocnna_fast.cli import build_parser
    from ocnna_fast.cli.prune import default_out, resolve_rule

    args = build_parser().parse_args(["prune", *flags])
    args.arch = args.model or args.arch
    resolve_rule(args)
    assert default_out(args) == folder
