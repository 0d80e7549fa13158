"""The ocnna-fast command line, end to end on a tiny subset of the shipped data."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torch_pruning")

from ocnna_fast.cli import main
from ocnna_fast.pruning import load_pruned

FIELDS = ["arch", "dataset", "k", "n_components", "base_accuracy", "pruned_accuracy_after_surgery", "bn_images",
          "pruned_accuracy_before_finetune",
          "pruned_accuracy", "accuracy_drop", "base_params", "pruned_params", "rpr", "base_macs", "pruned_macs",
          "macs_ratio", "scoring_seconds", "finetune_seconds"]


def test_prune_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    rc = main(["prune", "--arch", "resnet20", "--k", "40", "--n-components", "0.9", "--score-images", "32",
               "--eval-images", "40", "--train-images", "64", "--finetune-epochs", "1", "--batch-size", "32",
               "--bn-images", "48", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for f in FIELDS:
        assert f in report, f
    assert report["bn_images"] == 48
    assert 0 < report["rpr"] < 1 and 0 < report["macs_ratio"] < 1
    assert report["pruned_params"] < report["base_params"]
    assert report["accuracy_drop"] == pytest.approx(report["base_accuracy"] - report["pruned_accuracy"])
    assert "| rpr |" in (out / "report.md").read_text()
    model = load_pruned(out / "pruned")
    assert sum(p.numel() for p in model.parameters()) == report["pruned_params"]
    # evaluate reads the pruned directory back
    assert main(["evaluate", "--pruned", str(out / "pruned"), "--eval-images", "40", "--data-dir", str(data_dir),
                 "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["accuracy"] == pytest.approx(report["pruned_accuracy"])


def test_score_command(tmp_path, data_dir):
    from ocnna_fast import Scores

    assert main(["score", "--arch", "resnet20", "--images", "16", "--data-dir", str(data_dir),
                 "--out", str(tmp_path), "--no-progress"]) == 0
    s = Scores.load(tmp_path / "scores.safetensors")
    assert len(s) == 19 and all(ls.count == 16 for ls in s.values())


@pytest.mark.parametrize("argv, message", [
    (["prune", "--arch", "resnet1000"], "unknown --arch"),
    (["prune", "--k", "100"], "--k"),
    (["prune", "--k", "-5"], "--k"),
    (["prune", "--arch", "densenet40"], "pass --weights"),
    (["prune", "--bn-images", "-1"], "--bn-images"),
])
def test_bad_arguments(argv, message, tmp_path, data_dir):
    with pytest.raises(SystemExit, match=message):
        main(argv + ["--data-dir", str(data_dir), "--out", str(tmp_path)])


def test_missing_data_is_explained(tmp_path, capsys):
    rc = main(["score", "--arch", "resnet20", "--images", "4", "--data-dir", str(tmp_path / "nowhere"),
               "--out", str(tmp_path)])
    assert rc == 2
    assert "OCNNA_DATA_DIR" in capsys.readouterr().err
