"""README's "Prune your own model", run as written on a tiny image folder:
the command through the CLI and the Python block marked runnable.  Only
the image side changes (224 -> 32 pixels, so a ResNet-18 runs in seconds);
every other word is README's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ocnna_fast import cli

torchvision = pytest.importorskip("torchvision")

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.index("\n## ", start + 3)
    return README[start:end]


def _own_model_folder(root: Path, classes: int = 10) -> None:
    """README's ``my_images`` (ImageNet layout) and ``resnet18.pt`` in ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in range(classes):
            d = root / "my_images" / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), root / "resnet18.pt")


def test_the_own_model_python_block_prunes_a_resnet18_to_half_its_macs(tmp_path, monkeypatch):
    blocks = re.findall(r"<!-- runnable: own-model -->\n```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1, "README's own-model Python block, marked runnable"
    code = blocks[0].replace("224", "32")
    _own_model_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (own-model block)", "exec"), scope)
    pruned, plan = scope["pruned"], scope["plan"]
    assert abs(plan["budget"]["reached"] - 0.5) <= 0.02 * 0.5
    base = sum(p.numel() for p in scope["model"].parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * base
    assert pruned.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # the caller's model is left as found: every weight, and its train/eval flag
    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.load_state_dict(torch.load(tmp_path / "resnet18.pt"))
    for (name, a), b in zip(scope["model"].state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert scope["model"].training


def test_the_own_model_command_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = re.findall(r"```bash\n(ocnna-fast prune --model .*?)```", _section("Prune your own model"), re.S)
    assert len(commands) == 1, "README's own-model command"
    argv = shlex.split(commands[0].replace("\\\n", " ").replace("--input-size 224", "--input-size 32"))[1:]
    _own_model_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    cli.main(argv)
    out = capsys.readouterr().out
    assert "pruned at macs=0.5" in out
    report = (tmp_path / "runs" / "resnet18" / "report.json").read_text()
    assert '"macs_ratio"' in report
