"""Every command runs where ``--device`` says: ``auto`` is a usable GPU,
else the CPU; a GPU asked for and not usable is one line, before anything
loads; under torchrun ``auto`` is the process's own GPU."""

from __future__ import annotations

import pytest
import torch

from ocnna_fast._util import placement
from ocnna_fast.cli import build_parser, main

COMMANDS = [
    ["prune", "--arch", "resnet20"],
    ["bench", "--arch", "resnet20"],
    ["finetune", "--arch", "resnet20"],
    ["evaluate", "--arch", "resnet20"],
    ["score", "--arch", "resnet20"],
    ["export", "--pruned", "x", "--out", "y.onnx"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_every_command_takes_a_device_and_defaults_to_auto(argv):
    args = build_parser().parse_args(argv)
    assert args.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert build_parser().parse_args([*argv, "--device", "cpu"]).device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_gpu_asked_for_where_there_is_none_is_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_:  # the parser refuses it: nothing has loaded yet
        main([*argv, "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "no CUDA GPU is usable here" in err[-1], err


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "meta"])
def test_unknown_devices_are_named(capsys, bad):
    with pytest.raises(SystemExit):
        main(["evaluate", "--arch", "resnet20", "--device", bad])
    assert repr(bad) in capsys.readouterr().err


def test_auto_under_torchrun_is_the_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert placement.resolve_device("auto") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.resolve_device("auto") == torch.device("cpu")
    assert placement.resolve_device(None) is None


def test_a_job_on_the_models_device_works_on_the_model_itself():
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob
    from ocnna_fast.models import build

    model = build("resnet20")
    data = TensorImages(torch.rand(8, 3, 16, 16), torch.zeros(8, dtype=torch.long), (0.5,) * 3, (0.25,) * 3)
    job = PruneJob(model, JobData(evaluation=data), JobSettings(k=40, device="auto"), progress=False)
    assert job.model is model and job.device == torch.device("cpu") and job.example.device == job.device
    assert job.settings.device == "cpu" and job.settings.precision == "fp32"  # amp is a GPU's default
