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
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .._util.atomic import write_text_atomic
from .._util.validate import as_count, percentile
from ..data.tensorimages import image_side
from ..deploy.latency import eager_latency, latency_ms
from ..job.pipeline import JobData, JobSettings, PruneJob, measure_baseline
from ..selection.criteria import CRITERIA, SEEDED
from .results_file import document, finite_or_none, fmt, load_rows, mean, model_config, run_cells

__all__ = ["run_suite", "check_cells", "latency_ms", "RESULT_KEYS"]

RESULT_KEYS = (
    "criterion",
    "k",
    "seed",
    "rpr",
    "macs_ratio",
    "acc_surgery",
    "acc_bn",
    "acc_finetuned",
    "score_seconds",
    "latency_ms_b1",
    "latency_ms_b64",
)


def _cell_key(row: Dict[str, Any]) -> tuple:
    return (row["criterion"], float(row["k"]), int(row["seed"]))


def _load_rows(path: Path, config: Dict[str, Any]) -> List[Dict[str, Any]]:
    return load_rows(path, config, _row_ok, _cell_key)


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
    *,
    arch: str,
    score_set: Any,
    bn_set: Optional[Any],
    train_set: Optional[Any],
    eval_set: Any,
    criteria: Sequence[str],
    ks: Sequence[float],
    seeds: Sequence[int],
    out: Path,
    finetune_epochs: int = 0,
    lr: float = 0.01,
    batch_size: int = 128,
    input_size: Optional[int] = None,
    latency_repeats: int = 10,
    ignored_layers: Optional[Iterable[nn.Module]] = None,
    progress: bool = True,
    log=print,
    dataset: str = "cifar10-jpeg",
    scope: Optional[str] = None,
    data_seed: int = 0,
    folded: str = "regression",
    refit: bool = False,
) -> List[Dict[str, Any]]:
    """Runs (or continues) the suite into ``out`` (``results.json``,
    ``results.md``); returns the rows.  Each cell is one ``PruneJob``; the
    base model is measured once; deterministic criteria run at the first seed
    only unless fine-tuning makes the seed matter.  ``folded``, ``refit``: as
    ``JobSettings``."""
    check_cells(criteria, ks, seeds)
    if finetune_epochs > 0 and train_set is None:
        raise ValueError("fine-tuning needs a training set")
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    input_size = input_size or image_side(eval_set)  # the images' own side, never a silent default
    config = _config(arch, dataset, scope, score_set, bn_set, train_set, eval_set, finetune_epochs, lr)
    config.update(batch_size=batch_size, seed=data_seed, input_size=input_size, latency_repeats=latency_repeats)
    config.update(model_config(model, folded, refit))
    rows = _load_rows(out / "results.json", config)
    data = JobData(eval=eval_set, score=score_set, bn=bn_set, train=train_set if finetune_epochs else None)
    settings = JobSettings(
        epochs=finetune_epochs, lr=lr, batch_size=batch_size, input_size=input_size, folded=folded, refit=refit
    )
    suite = _Suite(model, data, settings, ignored_layers, latency_repeats)
    log(suite.describe_base())
    cells = _pending(criteria, ks, seeds, finetune_epochs, {_cell_key(r) for r in rows})

    def save(row: Dict[str, Any]) -> None:
        rows.append(row)
        write_text_atomic(out / "results.json", json.dumps(suite.document(config, rows), indent=1))

    run_cells(cells, suite.cell, save, ("criterion", "k"), progress)
    doc = suite.document(config, rows)
    write_text_atomic(out / "results.md", results_table(rows, arch, config, doc["base"]))
    if not _plots(rows, out, arch):
        log("plots skipped: matplotlib is not installed (pip install 'ocnna-fast[bench]')")
    return rows


def _config(arch, dataset, scope, score_set, bn_set, train_set, eval_set, epochs, lr) -> Dict[str, Any]:
    """The settings a suite's rows depend on (a resume must match them all):
    the base weights (by digest), the images drawn (their counts and seed),
    their size and the latency repeats are added by the caller."""
    return {
        "arch": arch,
        "dataset": dataset,
        "scope": scope or "custom",
        "score_images": len(score_set),
        "bn_images": len(bn_set) if bn_set else 0,
        "train_images": len(train_set) if train_set is not None and epochs else 0,
        "eval_images": len(eval_set),
        "finetune_epochs": epochs,
        "lr": lr,
    }


def _pending(criteria, ks, seeds, finetune_epochs: int, done) -> List[tuple]:
    """The cells still to run, k-major: a suite stopped early has every criterion at the first k."""
    cells = []
    for k in ks:
        for c in criteria:
            for s in seeds if (c in SEEDED or finetune_epochs > 0) else seeds[:1]:
                if (c, float(k), int(s)) not in done:
                    cells.append((c, float(k), int(s)))
    return cells


class _Suite:
    """The base model measured once, the criteria's values cached per
    (criterion, seed), and one prune job per cell."""

    def __init__(self, model, data: JobData, settings: JobSettings, ignored_layers, latency_repeats: int) -> None:
        self.model, self.data, self.settings, self.repeats = model, data, settings, latency_repeats
        self.ignored = list(ignored_layers) if ignored_layers is not None else None
        self.baseline = measure_baseline(model, data.eval, settings.input_size)
        self.base_latency = eager_latency(model, settings.input_size, latency_repeats) if latency_repeats else None
        self.values: Dict[tuple, tuple] = {}

    def describe_base(self) -> str:
        lat, base = self.base_latency, self.baseline
        text = f"base: {base.accuracy:.2f}% on {len(self.data.eval)} images, {base.params} parameters"
        if lat:
            text += f", latency {lat[1]['median']:.2f} ms (batch 1) / {lat[64]['median']:.1f} ms (batch 64)"
        return text

    def cell(self, criterion: str, k: float, seed: int) -> Dict[str, Any]:
        settings = dataclasses.replace(self.settings, criterion=criterion, k=k, seed=seed)
        job = PruneJob(
            self.model, self.data, settings, ignored_layers=self.ignored, baseline=self.baseline, progress=False
        )
        key = (criterion, seed if criterion in SEEDED else 0)
        if key not in self.values:
            self.values[key] = (job.rank(), job.seconds["rank"])
        values, seconds = self.values[key]
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
        row.update(self._latency(result.pruned), base_accuracy=self.baseline.accuracy)
        return row

    def _latency(self, pruned: nn.Module) -> Dict[str, Optional[float]]:
        if self.base_latency is None:
            return dict.fromkeys(("latency_ms_b1", "latency_ms_b64", "latency_ratio_b1", "latency_ratio_b64"))
        lat = eager_latency(pruned, self.settings.input_size, self.repeats)
        return {
            "latency_ms_b1": lat[1]["median"],
            "latency_ms_b64": lat[64]["median"],
            "latency_ratio_b1": lat[1]["median"] / self.base_latency[1]["median"],
            "latency_ratio_b64": lat[64]["median"] / self.base_latency[64]["median"],
        }

    def document(self, config: Dict[str, Any], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        base: Dict[str, Any] = {
            "accuracy": self.baseline.accuracy,
            "params": self.baseline.params,
            "macs": self.baseline.macs,
        }
        if self.base_latency is not None:
            base.update(latency_ms_b1=self.base_latency[1], latency_ms_b64=self.base_latency[64])
        base["threads"] = torch.get_num_threads()
        return document(config, base, rows)


def summarise(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One line per (criterion, k): means over seeds (and the seed count)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["criterion"], float(r["k"])), []).append(r)
    out = []
    for (c, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        line = {"criterion": c, "k": k, "seeds": len(rs)}
        for f in RESULT_KEYS[3:]:  # what a cell measures (criterion, k and seed name it)
            line[f] = mean([r[f] for r in rs])
        for f in ("acc_bn", "acc_finetuned"):
            values = [r[f] for r in rs if r[f] is not None]
            line[f"{f}_min"] = min(values, default=None)
            line[f"{f}_max"] = max(values, default=None)
        out.append(line)
    return out


def results_table(
    rows: List[Dict[str, Any]], arch: str, config: Dict[str, Any], base: Optional[Dict[str, Any]] = None
) -> str:
    """Markdown: the base model, the settings, one row per (criterion, k), means over seeds."""
    lines = [f"# Pruning criteria on {arch}, identical structure", ""]
    if base:
        lat = base.get("latency_ms_b1")
        lines += [
            f"Base model: {base['accuracy']:.2f}% top-1 on {config['eval_images']} test images, "
            f"{base['params']:,} parameters, {base['macs']:,} MACs per image"
            + (f", {lat['median']:.2f} ms at batch 1 ({base.get('threads', '?')} threads)" if lat else "")
            + ".",
            "",
        ]
    lines += ["Settings:", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in sorted(config.items())] + [""]
    lines += [
        "| k | criterion | seeds | RPR | MACs ratio | acc. after surgery | acc. after BN | "
        "acc. after fine-tuning | scoring s | latency b1 ms | latency b64 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summarise(rows):
        bn, ft = (_with_range(s, f) for f in ("acc_bn", "acc_finetuned"))
        lines.append(
            f"| {s['k']:g} | {s['criterion']} | {s['seeds']} | {fmt(s['rpr'], 4)} | "
            f"{fmt(s['macs_ratio'], 4)} | {fmt(s['acc_surgery'])} | {bn} | {ft} | "
            f"{fmt(s['score_seconds'], 1)} | {fmt(s['latency_ms_b1'])} | {fmt(s['latency_ms_b64'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def _with_range(line: Dict[str, Any], field: str) -> str:
    """The mean over seeds, and with several seeds their range."""
    text = fmt(line[field])
    if line["seeds"] > 1 and line[field] is not None:
        text += f" ({fmt(line[field + '_min'])}-{fmt(line[field + '_max'])})"
    return text


def _plots(rows: List[Dict[str, Any]], out: Path, arch: str) -> bool:
    """accuracy vs RPR per criterion, and accuracy vs k; skipped (with a
    message in results.md's folder) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_text_atomic(out / "plots-skipped.txt", "matplotlib is not installed: pip install 'ocnna-fast[bench]'\n")
        return False
    summary = summarise(rows)
    field = (
        "acc_finetuned"
        if any(s["acc_finetuned"] is not None for s in summary)
        else ("acc_bn" if any(s["acc_bn"] is not None for s in summary) else "acc_surgery")
    )
    for x_field, name, xlabel in (
        ("rpr", "accuracy_vs_rpr.png", "remaining parameters ratio"),
        ("k", "accuracy_vs_k.png", "k (percentile removed per group)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in sorted({s["criterion"] for s in summary}):
            pts = sorted((s[x_field], s[field]) for s in summary if s["criterion"] == c and s[field] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
        ax.set_xlabel(xlabel)
        stage = {"acc_finetuned": "after fine-tuning", "acc_bn": "after BatchNorm re-estimation"}
        ax.set_ylabel(f"top-1 accuracy, % ({stage.get(field, 'right after surgery')})")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    (out / "plots-skipped.txt").unlink(missing_ok=True)
    return True
