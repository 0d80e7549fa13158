"""What pruning costs at equal recovery: the unpruned base model given the
recovery a prune job gave its pruned model (distillation from itself, the
same epochs, images, rate and seed), both evaluated on every test image.

    python benchmarks/equal_recovery.py --pruned runs/resnet56-macs05/pruned --json OUT.json

The job's own settings (architecture, weights, data set, training images,
epochs, learning rate, batch size, seed) are read from the pruned folder's
``report.json`` one level up, so the comparison is the job's, not a guess.
When ``OUT.json`` already holds a base distilled with the same recovery
settings from the same weights file (its sha256; another pruned model of the
same job), that base's figure is kept
and only the pruned model is evaluated: the base's recovery does not depend
on what was pruned.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch


def _shown(path) -> str:
    """A weights file as the results show it: by its path in the repository
    when it is there (``data/...``), not by this machine's absolute path."""
    root = Path(__file__).resolve().parents[1]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pruned", required=True, help="the pruned model folder of a finished prune job")
    p.add_argument("--json", required=True, help="where the figures go")
    a = p.parse_args()

    from ocnna_fast.cli import build_parser
    from ocnna_fast.cli.loading import images, load_model, load_pruned_folder
    from ocnna_fast.data.evaluation import evaluate
    from ocnna_fast.data.fetch import sha256_of
    from ocnna_fast.recovery.distill import distill

    report = json.loads((Path(a.pruned).parent / "report.json").read_text())
    argv = shlex.split(report["settings"]["command"])[1:]  # "ocnna-fast prune ..." as run
    job = build_parser().parse_args(argv)
    torch.set_num_threads(int(report["settings"]["threads"]))
    base, weights = load_model(job.arch, job.weights, job.data_dir, job.dataset, None, seed=job.seed)
    job.eval_images = None  # every test image
    test = images(job, "test", None, False, job.seed)
    train = images(job, "train", job.train_images, True, job.seed + 2)  # the job's distillation images
    base_acc = evaluate(base, test)
    digest = sha256_of(weights)
    earlier = _earlier_base(Path(a.json), job, build_parser, digest, base_acc)
    if earlier is not None:
        after, seconds = earlier["base_after_the_same_distillation"], earlier["distillation_seconds"]
        print(f"the base's recovery is {a.json}'s (the same recovery settings): {after:.2f}")
    else:
        student = load_model(job.arch, job.weights, job.data_dir, job.dataset, None, seed=job.seed)[0]
        t = time.perf_counter()
        distill(
            student, base, train, epochs=job.finetune_epochs, lr=job.lr, batch_size=job.batch_size,
            seed=job.seed, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t
        after = evaluate(student, test)
    job.pruned = a.pruned
    pruned, _ = load_pruned_folder(job)
    out = {
        "command": report["settings"]["command"],
        "base_weights": _shown(weights),
        "base_weights_sha256": digest,  # an earlier result's base is reused only for these very weights
        "test_images": len(test),
        "base": base_acc,
        "base_after_the_same_distillation": after,
        "pruned_after_distillation": evaluate(pruned, test),
        "distillation_seconds": seconds,
    }
    out["cost_of_pruning_at_equal_recovery"] = (
        out["base_after_the_same_distillation"] - out["pruned_after_distillation"]
    )
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


# what the base's recovery depends on: the base, its data and the distillation's settings
RECOVERY = (
    "arch",
    "model",
    "weights",
    "dataset",
    "data_dir",
    "train_images",
    "finetune_epochs",
    "lr",
    "batch_size",
    "seed",
)


def _earlier_base(path: Path, job, build_parser, digest: str, accuracy: float):
    """An earlier result at ``path`` whose base was recovered exactly as ``job``'s would be: the same
    recovery settings, weights of sha256 ``digest`` evaluating to ``accuracy``; or None."""
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    then = build_parser().parse_args(shlex.split(earlier["command"])[1:])
    same = all(getattr(then, k, None) == getattr(job, k, None) for k in RECOVERY)
    same = same and earlier.get("base_weights_sha256") == digest and earlier["base"] == accuracy
    return earlier if same and earlier["test_images"] else None


if __name__ == "__main__":
    main()
