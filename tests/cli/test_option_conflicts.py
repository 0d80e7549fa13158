"""No option is ignored in silence (docs/reliability.md, "Options"): one that
this run would not use, or that contradicts a pruned folder, is refused in
one line naming it; the messages name the options, not the Python objects."""

from __future__ import annotations

import argparse

import pytest
import torch

from ocnna_fast.cli import INTERRUPTED, main


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    return err


@pytest.mark.parametrize(
    "extra, named",
    [
        # the hostile pass's case: budget options beside the percentile rule
        (["--k", "40", "--round-to", "8", "--max-prune", "0.2"], ["--round-to", "--max-prune"]),
        (["--k", "40", "--allocation", "global"], ["--allocation"]),
        (
            ["--k", "40", "--refine-steps", "3", "--sensitivity-images", "16"],
            ["--refine-steps", "--sensitivity-images"],
        ),
        (["--k", "40", "--no-cap-search"], ["--cap-search"]),
        (["--k", "40", "--round-to", "8"], ["--round-to"]),
        (["--target", "macs=0.5", "--latency-batch", "4"], ["--latency-batch"]),
        (["--target", "params=0.5", "--latency-runtime", "eager"], ["--latency-runtime"]),
        (["--target", "macs=0.5", "--allocation", "global", "--refine-steps", "2"], ["--refine-steps"]),
    ],
)
def test_budget_options_a_run_would_not_use_are_refused(capsys, tmp_path, extra, named):
    err = _one_line_error(capsys, ["prune", "--arch", "resnet20", "--out", str(tmp_path / "o"), *extra])
    assert all(n in err for n in named), err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_bench_refuses_budget_options_without_target_or_sensitivity(capsys, tmp_path):
    err = _one_line_error(
        capsys, ["bench", "--arch", "resnet20", "--k", "40", "--round-to", "8", "--out", str(tmp_path)]
    )
    assert "--round-to" in err
    argv = ["bench", "--arch", "resnet20", "--target", "macs=0.5", "--methods", "uniform:l1"]
    err = _one_line_error(capsys, argv + ["--sensitivity-images", "8", "--out", str(tmp_path)])
    assert "--sensitivity-images" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--target", "macs=0.5", "--methods", "uniform:l1", "sensitivity:l1", "--sensitivity-images", "32"],
        ["bench", "--target", "macs=0.5", "--sensitivity-images", "32", "--round-to", "8"],  # default methods
        ["bench", "--target", "macs=0.5", "--methods", "uniform:l1", "--round-to", "8", "--max-prune", "0.5"],
    ],
)
def test_bench_accepts_budget_options_its_methods_use(argv):
    from ocnna_fast.cli import bench, build_parser

    args = build_parser().parse_args(argv)
    bench._check_axes(args)  # raises if an option were refused
    assert args.round_to in (1, 8) and args.sensitivity_images in (32, 512)


def test_the_sensitivity_error_names_the_option(capsys, tmp_path):
    argv = ["prune", "--arch", "resnet20", "--target", "macs=0.5", "--bn-images", "0", "--out", str(tmp_path)]
    err = _one_line_error(capsys, argv)
    assert "--bn-images" in err and "JobData" not in err


@pytest.fixture(scope="module")
def pruned_r20(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("p") / "R"
    argv = ["prune", "--arch", "resnet20", "--k", "40", "--criterion", "l1", "--score-images", "16"]
    argv += ["--eval-images", "16", "--bn-images", "16", "--finetune-epochs", "0", "--latency-repeats", "0"]
    assert main(argv + ["--no-progress", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    return out / "pruned"


@pytest.mark.parametrize(
    "extra, named",
    [
        # the hostile pass's case: a ResNet-20 folder scored while --arch/--weights name ResNet-56
        (["--arch", "resnet56", "--weights", "{data}/resnet-cifar10-akamaster/resnet56-4bfd9763.th"], "--weights"),
        (["--arch", "resnet56"], "--arch resnet56"),
        (["--input-size", "64"], "--input-size 64"),
    ],
)
def test_options_that_contradict_a_pruned_folder_are_refused(capsys, pruned_r20, data_dir, extra, named):
    extra = [e.replace("{data}", str(data_dir)) for e in extra]
    argv = ["evaluate", "--pruned", str(pruned_r20), "--eval-images", "8", "--data-dir", str(data_dir), *extra]
    assert named in _one_line_error(capsys, argv)


def test_options_that_agree_with_a_pruned_folder_are_accepted(capsys, pruned_r20, data_dir):
    argv = ["evaluate", "--pruned", str(pruned_r20), "--eval-images", "8", "--data-dir", str(data_dir)]
    assert main(argv + ["--arch", "resnet20", "--input-size", "32", "--no-progress"]) == 0


def test_an_interrupted_prune_says_what_resumes():
    """Ctrl-C while allocating used to say that the distillation resumes."""
    note = INTERRUPTED["prune"]
    assert "width search" in note and "distillation" in note


def test_a_factory_without_weights_is_seeded(tmp_path, monkeypatch):
    from ocnna_fast.cli.loading import load_model

    (tmp_path / "seeded_nets.py").write_text(
        "import torch\n"
        "def net():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(123)
    a, _ = load_model("seeded_nets:net", None, None, seed=0)
    torch.manual_seed(456)  # whatever the caller's stream, the same seed builds the same weights
    b, _ = load_model("seeded_nets:net", None, None, seed=0)
    c, _ = load_model("seeded_nets:net", None, None, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_the_input_size_comes_from_the_images_never_a_silent_default():
    """The hostile pass: a 64-pixel model's report said 37.2M MACs instead of 148.7M
    (JobSettings.input_size defaulted to 32); export_model defaulted to 32 too."""
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.deploy import export as ex
    from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob

    pixels = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(8, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    job = PruneJob(model, JobData(evaluation=images, scoring=images), JobSettings(criterion="l1"), progress=False)
    assert job.settings.input_size == 64 and tuple(job.example.shape) == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="input_size 32 differs from the 64px"):
        PruneJob(model, JobData(evaluation=images, scoring=images), JobSettings(criterion="l1", input_size=32))
    with pytest.raises(TypeError, match="give input_size"):
        ex.export_model(model, "unused.onnx", "onnx")


@pytest.mark.parametrize(
    "argv, short",
    [
        (["prune", "--arch", "resnet20", "--out", "o", "--finetune-epoch", "1"], "--finetune-epoch"),
        (["evaluate", "--pruned", "p", "--eval-image", "10"], "--eval-image"),
        (["export", "--pruned", "p", "--out", "o", "--verify-image", "1"], "--verify-image"),
        (["bench", "--arch", "resnet20", "--out", "o", "--train-image", "10"], "--train-image"),
    ],
)
def test_a_flag_written_short_is_refused_not_guessed(capsys, argv, short):
    """argparse would take ``--finetune-epoch`` for ``--finetune-epochs`` until
    another flag shares the prefix, and the command would change meaning then."""
    from ocnna_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    flags = [s for a in sub._actions for s in a.option_strings]
    assert short not in flags and len([f for f in flags if f.startswith(short)]) == 1  # a true abbreviation
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert f"unrecognized arguments: {short}" in capsys.readouterr().err
