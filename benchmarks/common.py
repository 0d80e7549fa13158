"""Shared pieces of the benchmarks: map-shape tables, timers and the batched
pure-PyTorch scorer."""

from __future__ import annotations

import argparse
import shlex
import time
from types import SimpleNamespace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

# (map size, maps per image) over every conv output: torchvision ResNet-50 at
# 224x224 (counted with forward hooks; 26,560 maps per image in all) and CIFAR
# ResNet-56 at 32x32.
RESNET50 = [(112, 64), (56, 1536), (28, 3712), (14, 10496), (7, 10752)]
RESNET56 = [(32, 16 * 19), (16, 32 * 18), (8, 64 * 18)]


def best_of(fn: Callable[[], object], repeat: int, sync: Optional[Callable[[], None]] = None) -> float:
    """Minimum wall time of ``repeat`` calls (the least noisy statistic on a shared machine)."""
    times: List[float] = []
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return min(times)


def torch_energies(
    x: torch.Tensor, n_components: Union[None, int, float], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The same math in batched PyTorch ops: centre, then the centred norm
    (``None``) or the Gram of the smaller side + ``torch.linalg.eigvalsh``,
    computed in ``dtype``."""
    x = x.to(dtype)
    xc = x - x.mean(dim=2, keepdim=True)
    if n_components is None:
        return xc.square().sum(dim=(2, 3)).sqrt()
    h, w = x.shape[2], x.shape[3]
    g = xc.transpose(2, 3) @ xc if w <= h else xc @ xc.transpose(2, 3)
    ev = torch.linalg.eigvalsh(g).flip(-1).clamp_min(0)
    cum = ev.cumsum(-1)
    if isinstance(n_components, int):
        kept = cum[..., min(n_components, ev.shape[-1]) - 1]
    else:
        total = cum[..., -1:].clamp_min(torch.finfo(dtype).tiny)
        q = (cum / total <= n_components).sum(-1, keepdim=True).clamp_max(ev.shape[-1] - 1)
        kept = cum.gather(-1, q).squeeze(-1)
    return kept.sqrt()


def parse_with_prune_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[argparse.Namespace, list]:
    """A script's own options before ``--`` and the ``ocnna-fast prune``
    options after it, passed the same to every run."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:cut]), argv[cut + 1 :]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties broken by position: the values compared are
    continuous); ``nan`` for fewer than three pairs."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def finished_run(report: dict, batch_size: int) -> SimpleNamespace:
    """A finished prune run rebuilt from its report's command: its ``args``,
    ``model``, ``data``, ``job`` (example, ignored layers, the run's
    criterion), the ranking ``values``, Torch-Pruning's ``dg``, the module
    ``names``, the ``found`` groups and the number of ``images`` its search
    drew."""
    from ocnna_fast.budget.search import budget_groups
    from ocnna_fast.cli import build_parser, loading
    from ocnna_fast.job.pipeline import JobSettings, PruneJob

    args = build_parser().parse_args(shlex.split(report["settings"]["command"])[1:])  # the run's prune command
    size = loading.check_data_fits(args)
    model, _ = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    data = loading.job_data(args)
    settings = JobSettings(criterion=args.criterion, batch_size=batch_size, input_size=size)
    images = getattr(args, "sensitivity_images", None) or settings.sensitivity_images  # as the search drew them
    job = PruneJob(model, data, settings, ignored_layers=loading.ignored_layers(model, args.scope), progress=False)
    values = job.rank()
    _, dg, names, found = budget_groups(model, job.example, job.ignored, values)
    return SimpleNamespace(
        args=args, model=model, data=data, job=job, values=values, dg=dg, names=names, found=found, images=images
    )
