"""``ocnna-fast`` command line: one module per command (``register`` adds
its parser, ``run`` runs it), shared options in ``options``, what the
commands load in ``loading``.

    ocnna-fast score    --arch resnet56 --images 2000 --n-components 0.95 --out runs/score
    ocnna-fast prune    --arch resnet56 --k 40 --finetune-epochs 2 --out runs/r56-k40
    ocnna-fast finetune --arch resnet56 --epochs 2 --out runs/r56-jpeg
    ocnna-fast evaluate --arch resnet56 --pruned runs/r56-k40/pruned

    ocnna-fast fetch    cifar10 resnet20

Commands read local data only (``--data-dir``/``$OCNNA_DATA_DIR``, the
checkout's ``data/``, the user cache, ``../shared/data``); only ``fetch``
downloads, and only what it is asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional, Sequence

from .._version import __version__
from . import bench, convert, evaluate, export, fetch, finetune, info, prune, score

__all__ = ["main", "build_parser"]

COMMANDS = (score, prune, bench, finetune, evaluate, export, convert, fetch, info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ocnna-fast", description="Fast, exact OCNNA filter scoring for PyTorch CNNs", allow_abbrev=False
    )
    p.add_argument("--version", action="version", version=f"ocnna-fast {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of expected errors too")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for sp in sub.choices.values():
        # a flag written short (--finetune-epoch) would change meaning the day another flag shares its prefix
        sp.allow_abbrev = False
    return p


# what an interrupted command kept, and how to go on
INTERRUPTED = {
    "prune": "nothing in {out} changed; the same command resumes: the width search replays the losses it "
    "measured, the distillation starts from its last finished epoch",
    "bench": "the cells finished so far are kept in {out}/results.json; the same command resumes from there",
    "finetune": "the same command resumes the fine-tuning from its last finished epoch",
    "fetch": "what was downloaded is kept as NAME.part; the same fetch resumes it",
}
# the commands torchrun may launch (their distillation runs in DistributedDataParallel)
DISTRIBUTED = ("prune", "finetune")


def _maybe_distributed(args: argparse.Namespace) -> int:
    """Runs prune/finetune; launched by torchrun with several processes, their
    distillation trains with DistributedDataParallel (gloo on CPU), every rank
    scores and prunes identically, and rank 0 alone prints and writes."""
    from .._util.distributed import init_from_env, shut_down

    device = str(getattr(args, "device", "cpu") or "cpu")
    rank, world = init_from_env(device)  # NCCL between GPUs, gloo between CPU processes
    if world == 1:
        return args.func(args)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))  # this rank's own GPU (--device auto: LOCAL_RANK's)
    args.no_progress = args.no_progress or rank != 0
    finished = False
    try:
        if rank != 0:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                code = args.func(args)
        else:
            print(
                f"torchrun: {world} processes; distillation in DistributedDataParallel, global batch {args.batch_size}"
            )
            code = args.func(args)
        finished = True
        return code
    finally:
        shut_down(finished)


def _check(args: argparse.Namespace) -> Optional[str]:
    """What the parser cannot see: a --model spec's form, --dataset imagenet without its folder."""
    if hasattr(args, "default_arch"):
        args.given_arch = args.arch  # None: not given (a pruned folder's own arch then holds)
        args.arch = args.arch or args.default_arch
    if getattr(args, "model", None):
        if ":" not in args.model:
            return f"--model must be 'package.module:factory', got {args.model!r}"
        args.arch = args.model  # a module:factory spec goes wherever a zoo name does
    if getattr(args, "dataset", None) == "imagenet" and not getattr(args, "data_dir", None):
        return (
            "--dataset imagenet reads the folder given as --data-dir DIR "
            "(DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG)"
        )
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = build_parser().parse_args(argv)
    args.argv = argv  # reports say how to run them again
    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.command in DISTRIBUTED:
            return _maybe_distributed(args)
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        note = INTERRUPTED.get(args.command, "no output was written or changed")
        print(f"interrupted: {note.format(out=getattr(args, 'out', None))}", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:
        # expected failures (bad arguments, files, data): one line; anything
        # else (a bug, InternalError included) keeps its traceback
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
