"""The pruning benchmark suite: criteria side by side at identical structure.

For each criterion, k and seed (a *cell*) the model is pruned with the
criterion's values in place of OCNNA's scores, every criterion removing the
same number of channels from the same groups (``prune(..., rule="count")``).
Each cell records accuracy right after surgery, after BatchNorm
re-estimation and after the fine-tuning budget (distillation from the
unpruned model; the same for every criterion), the parameter and MAC ratios,
CPU latency of the pruned vs the base model, and the criterion's scoring
time.  Cells are appended to ``results.json`` as they finish (atomically), so
a stopped suite continues where it stopped.

    ocnna-fast bench --arch resnet56 --k 20 40 60 --criteria ocnna l1 random --out runs/bench
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from torch import nn

from .._util.atomic import write_text_atomic
from .._util.validate import as_count, percentile
from ..data.tensorimages import image_side
from ..deploy.latency import latency_ms
from ..job.pipeline import JobData, JobSettings
from ..selection.criteria import CRITERIA, SEEDED
from .engine import Suite
from .results_file import finite_or_none, load_rows, model_config
from .tables import RESULT_KEYS, criteria_plots, criteria_table

__all__ = ["run_suite", "check_cells", "latency_ms"]


def _cell_key(row: Dict[str, Any]) -> tuple:
    return (row["criterion"], float(row["k"]), int(row["seed"]))


def _row_ok(r: Any) -> bool:
    """A row holds every field, each of its type: the cell's name, and numbers
    (finite, or ``None`` for a step that did not run) for what it measured."""
    if not (isinstance(r, dict) and set(RESULT_KEYS) <= set(r)):
        return False
    number = (int, float)
    if not (isinstance(r["criterion"], str) and r["criterion"] in CRITERIA):
        return False
    if isinstance(r["k"], bool) or not isinstance(r["k"], number) or not 0 <= r["k"] < 100:
        return False
    if isinstance(r["seed"], bool) or not isinstance(r["seed"], int) or r["seed"] < 0:
        return False
    return finite_or_none(r, RESULT_KEYS[3:])


def check_cells(criteria: Sequence[str], ks: Sequence[float], seeds: Sequence[int]) -> None:
    """The suite's axes: known criteria, percentiles in [0, 100), seeds >= 0,
    at least one of each and none twice (a repeated cell would be counted as
    another seed in the tables)."""
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criteria {unknown}; choose from {', '.join(CRITERIA)}")
    if not criteria or not ks or not seeds:
        raise ValueError("need at least one criterion, one k and one seed")
    for k in ks:
        percentile(k)
    for s in seeds:
        as_count(s, "a seed")
    for option, values in (
        ("--criteria", list(criteria)),
        ("--k", [float(k) for k in ks]),
        ("--seeds", [int(s) for s in seeds]),
    ):
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            raise ValueError(f"{option} lists {', '.join(map(str, twice))} more than once; give each value once")


def run_suite(
    model: nn.Module,
    data: JobData,
    settings: JobSettings,
    *,
    criteria: Sequence[str],
    ks: Sequence[float],
    seeds: Sequence[int],
    out: Path,
    config: Dict[str, Any],
    ignored_layers: Optional[Iterable[nn.Module]] = None,
    latency_repeats: int = 10,
    progress: bool = True,
    log=print,
) -> List[Dict[str, Any]]:
    """Runs (or continues) the suite into ``out`` (``results.json``,
    ``results.md``, plots); returns the rows.  Each cell is one ``PruneJob``
    with ``settings`` at the cell's criterion, k and seed; deterministic
    criteria run at the first seed only unless fine-tuning makes the seed
    matter.  ``config``: what the caller's data and model are (``arch``,
    ``dataset``, ``scope``, ``seed``; checked on resume with the rest)."""
    check_cells(criteria, ks, seeds)
    if settings.epochs > 0 and data.training is None:
        raise ValueError("fine-tuning needs a training set")
    out.mkdir(parents=True, exist_ok=True)
    # the images' own side, never a silent default
    settings = dataclasses.replace(settings, input_size=settings.input_size or image_side(data.evaluation))
    config = _config(config, model, data, settings, latency_repeats)
    rows = load_rows(out / "results.json", config, _row_ok, _cell_key)
    suite = _Suite(model, data, settings, latency_repeats, ignored_layers)
    log(suite.describe_base())
    cells = _pending(criteria, ks, seeds, settings.epochs, {_cell_key(r) for r in rows})
    doc = suite.run(cells, suite.cell, ("criterion", "k"), out, config, rows, progress)
    arch = config.get("arch", "")
    write_text_atomic(out / "results.md", criteria_table(rows, arch, config, doc["base"]))
    if not criteria_plots(rows, out, arch):
        log("plots skipped: matplotlib is not installed (pip install 'ocnna-fast[bench]')")
    return rows


def _config(given: Dict[str, Any], model: nn.Module, data: JobData, settings: JobSettings, latency_repeats: int):
    """The settings a suite's rows depend on (a resume must match them all):
    the caller's, the images drawn (their counts), the job's settings, the
    base weights (by digest)."""
    epochs = settings.epochs
    config = {
        "arch": given.get("arch", ""),
        "dataset": given.get("dataset", "custom"),
        "scope": given.get("scope") or "custom",
    }
    config.update(
        score_images=len(data.scoring),
        bn_images=len(data.calibration) if data.calibration else 0,
        train_images=len(data.training) if data.training is not None and epochs else 0,
        eval_images=len(data.evaluation),
        finetune_epochs=epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
        seed=given.get("seed", 0),
        input_size=settings.input_size,
        latency_repeats=latency_repeats,
    )
    config.update(model_config(model, settings.folded, settings.refit))
    return config


def _pending(criteria, ks, seeds, finetune_epochs: int, done) -> List[tuple]:
    """The cells still to run, k-major: a suite stopped early has every criterion at the first k."""
    cells = []
    for k in ks:
        for c in criteria:
            for s in seeds if (c in SEEDED or finetune_epochs > 0) else seeds[:1]:
                if (c, float(k), int(s)) not in done:
                    cells.append((c, float(k), int(s)))
    return cells


class _Suite(Suite):
    """Criteria side by side: every cell prunes the same counts from the same groups."""

    def __init__(self, model, data: JobData, settings: JobSettings, repeats: int, ignored_layers) -> None:
        super().__init__(model, data, settings, repeats)
        self.ignored = list(ignored_layers) if ignored_layers is not None else None

    def cell(self, criterion: str, k: float, seed: int) -> Dict[str, Any]:
        job = self.job(dataclasses.replace(self.settings, criterion=criterion, k=k, seed=seed), self.ignored)
        values, seconds = self.values_of(job)
        job.rank(values)
        job.surgery()
        job.recalibrate()
        job.distill()
        result = job.result()
        row: Dict[str, Any] = {"criterion": criterion, "k": k, "seed": seed, "score_seconds": seconds}
        row.update(rpr=result.rpr, macs_ratio=result.macs_ratio, acc_surgery=result.accuracy["surgery"])
        row["acc_bn"] = result.accuracy.get("recalibrated")
        if result.recalibration is not None:  # folded-BatchNorm models get bias compensation instead (same images)
            row["recalibration"] = result.recalibration["method"]
        row["acc_finetuned"] = result.accuracy.get("distilled")
        row.update(self.latency(result.pruned), base_accuracy=self.baseline.accuracy)
        return row
