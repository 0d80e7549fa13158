"""The data sets and models users bring: ImageNet-layout folders read through
a DataLoader (``FolderImages``), and ``--model module:factory`` networks."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import torch
from helpers import CLASSES, MEAN, STD, write_folder
from torch import nn

from ocnna_fast import cli
from ocnna_fast.data.imagefolder import FolderImages, folder_classes, folder_split
from ocnna_fast.recovery.distill import distill, state_sha256


def test_eval_transform_is_resize_then_centre_crop(tmp_path):
    # at size 28 the short side is resized to 28 * 256/224 = 32: a 32x32 image
    # is untouched by the resize, so the crop must be exactly pixels [2:30]
    written = write_folder(tmp_path, per_class=(1, 1))
    data = folder_split(tmp_path, "test", 28, MEAN, STD)
    x, y = next(data.batches(8))
    assert x.shape == (3, 3, 28, 28)
    assert y.tolist() == [0, 1, 2]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i, (a, _) in enumerate(written["val"]):
        want = (torch.from_numpy(a[2:30, 2:30]).permute(2, 0, 1).float() / 255 - mean) / std
        torch.testing.assert_close(x[i], want, atol=1e-6, rtol=0)


def test_labels_follow_sorted_class_folders_and_subsets_are_balanced(tmp_path):
    write_folder(tmp_path, per_class=(4, 2))
    full = folder_split(tmp_path, "train", 28, MEAN, STD)
    assert full.classes == CLASSES and len(full) == 12
    assert full.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    sub = folder_split(tmp_path, "train", 28, MEAN, STD, limit=6, seed=3)
    assert sorted(sub.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(torch.cat([y for _, y in sub.batches(4)]), sub.labels)


def test_mismatched_or_missing_folders_are_refused(tmp_path):
    write_folder(tmp_path, per_class=(1, 1))
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="different class folders"):
        folder_classes(tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageNet layout"):
        folder_split(tmp_path / "nowhere", "train", 28, MEAN, STD)


def test_augmented_batches_depend_on_the_generator_only(tmp_path):
    """Exact resume needs the same batches for the same generator state,
    whatever the number of worker processes."""
    write_folder(tmp_path, per_class=(4, 1))

    def epoch(workers, seed):
        data = folder_split(tmp_path, "train", 24, MEAN, STD, augment=True, workers=workers)
        return [b for b in data.batches(5, shuffle=True, gen=torch.Generator().manual_seed(seed))]

    a, b, c = epoch(0, 7), epoch(2, 7), epoch(0, 8)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    state = torch.random.get_rng_state()
    epoch(0, 7)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state never moves


def _tiny(classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def test_distillation_from_a_folder_resumes_exactly(tmp_path):
    write_folder(tmp_path / "data", per_class=(4, 1))
    data = folder_split(tmp_path / "data", "train", 24, MEAN, STD, augment=True, workers=0)
    torch.manual_seed(0)
    teacher, start = _tiny(), _tiny()
    runs = []
    for stop in (None, 1):
        student = _tiny()
        student.load_state_dict(start.state_dict())
        ck = tmp_path / f"ck-{stop}"
        distill(
            student,
            teacher,
            data,
            epochs=2,
            lr=0.05,
            batch_size=4,
            checkpoint_dir=ck,
            progress=False,
            stop_after_epoch=stop,
        )
        if stop is not None:  # resumed by a second call
            student = _tiny()
            student.load_state_dict(start.state_dict())
            distill(student, teacher, data, epochs=2, lr=0.05, batch_size=4, checkpoint_dir=ck, progress=False)
        runs.append(state_sha256(student))
    assert runs[0] == runs[1]
    assert runs[0] != state_sha256(start)


FACTORY = textwrap.dedent("""
    from torch import nn

    def tiny():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def wrong_classes():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))

    not_a_model = 5
""")


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    name = f"user_nets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_cli_prunes_a_user_model_on_a_user_folder(tmp_path, user_module, capsys):
    from safetensors.torch import save_file

    from ocnna_fast.models import build
    from ocnna_fast.surgery.plans import load_pruned

    write_folder(tmp_path / "imnet", per_class=(6, 3))
    torch.manual_seed(1)
    model = build(f"{user_module}:tiny")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    common = [
        "--model",
        f"{user_module}:tiny",
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--dataset",
        "imagenet",
        "--data-dir",
        str(tmp_path / "imnet"),
        "--input-size",
        "24",
        "--workers",
        "0",
        "--no-progress",
        "--batch-size",
        "4",
    ]
    assert (
        cli.main(
            [
                "prune",
                *common,
                "--k",
                "50",
                "--score-images",
                "12",
                "--bn-images",
                "6",
                "--finetune-epochs",
                "1",
                "--latency-repeats",
                "0",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["eval_images"] == 9 and report["score_images"] == 12
    assert report["pruned_params"] < report["base_params"]
    assert report["recalibration"] == "batchnorm" and report["bn_images"] == 6
    plan = json.loads((tmp_path / "run" / "pruned" / "plan.json").read_text())
    assert plan["model"]["arch"] == f"{user_module}:tiny" and plan["model"]["input_size"] == 24
    # the pruned folder rebuilds from the model the caller builds (a file never chooses the code that runs)
    pruned = load_pruned(tmp_path / "run" / "pruned", base_model=build(f"{user_module}:tiny"))
    assert sum(p.numel() for p in pruned.parameters()) == report["pruned_params"]
    capsys.readouterr()
    assert (
        cli.main(
            [
                "evaluate",
                "--pruned",
                str(tmp_path / "run" / "pruned"),
                "--model",
                f"{user_module}:tiny",
                "--dataset",
                "imagenet",
                "--data-dir",
                str(tmp_path / "imnet"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["images"] == 9 and got["accuracy"] == pytest.approx(report["pruned_accuracy"])
    # a torch state dict works as --weights too, and gives the same accuracy as the safetensors file
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for w in ("w.safetensors", "w.pt"):
        args = [a if a != str(tmp_path / "w.safetensors") else str(tmp_path / w) for a in common]
        assert cli.main(["evaluate", *args]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == report["base_accuracy"]


@pytest.mark.parametrize(
    "spec, message",
    [
        (":tiny", "package.module:factory"),
        ("no_such_module_xyz:tiny", "cannot import"),
        ("{m}:missing", "no attribute"),
        ("{m}:not_a_model", "not callable"),
        ("{m}:wrong_classes", r"needs logits \(1, 3\)"),
    ],
)
def test_cli_refuses_bad_user_models(tmp_path, user_module, capsys, spec, message):
    write_folder(tmp_path / "imnet", per_class=(1, 1))
    rc = cli.main(
        [
            "evaluate",
            "--model",
            spec.format(m=user_module),
            "--dataset",
            "imagenet",
            "--data-dir",
            str(tmp_path / "imnet"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)


def test_folder_dataset_needs_a_data_dir(tmp_path, capsys):
    assert (
        cli.main(
            [
                "evaluate",
                "--arch",
                "mobilenet_v2",
                "--weights",
                str(tmp_path / "x.pt"),
                "--dataset",
                "imagenet",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--data-dir DIR" in capsys.readouterr().err


def test_folder_images_subset_keeps_its_transform(tmp_path):
    write_folder(tmp_path, per_class=(2, 1))
    full = FolderImages(tmp_path / "train", 28, MEAN, STD)
    sub = full.subset([5, 0])
    assert sub.labels.tolist() == [2, 0] and len(full) == 6
    xs, _ = next(sub.batches(2))
    xf, _ = next(full.batches(6))
    assert torch.equal(xs[0], xf[5]) and torch.equal(xs[1], xf[0])
    assert sub.fingerprint() != full.fingerprint()
