"""The one runner behind both suites: the base model measured once, each
criterion's values computed once, one ``PruneJob`` per cell, and the results
file rewritten after every cell, so a stopped suite resumes.  A suite kind
(``equal_structure``: criterion x k; ``equal_cost``: method x target) adds
only its cells, their rows and its tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._util.atomic import write_text_atomic
from .._util.placement import model_device
from .._util.precision import resolve_precision
from ..deploy.latency import eager_latency
from ..job.pipeline import JobData, JobSettings, PruneJob, measure_baseline
from ..selection.criteria import SEEDED
from .results_file import document, run_cells

__all__ = ["Suite", "LATENCY_KEYS"]

# a row's latency: the pruned model's, and over the base model's, at batch 1 and 64 (None: not measured)
LATENCY_KEYS = ("latency_ms_b1", "latency_ms_b64", "latency_ratio_b1", "latency_ratio_b64")


class Suite:
    """What both kinds of suite share.  ``latency_repeats`` = 0 measures no latency."""

    def __init__(self, model: nn.Module, data: JobData, settings: JobSettings, latency_repeats: int) -> None:
        self.model, self.data, self.settings, self.repeats = model.eval(), data, settings, latency_repeats
        precision = resolve_precision(settings.precision, model_device(model))
        self.baseline = measure_baseline(model, data.evaluation, settings.input_size, precision=precision)
        self.base_latency = eager_latency(model, settings.input_size, latency_repeats) if latency_repeats else None
        self.values: Dict[tuple, Tuple[Any, float]] = {}

    def job(self, settings: JobSettings, ignored: Optional[Sequence[nn.Module]]) -> PruneJob:
        return PruneJob(self.model, self.data, settings, ignored_layers=ignored, baseline=self.baseline, progress=False)

    def values_of(self, job: PruneJob) -> Tuple[Any, float]:
        """The job's criterion values and the seconds they took, computed once
        per criterion, seed (for a seeded criterion) and scope (its groups)."""
        s = job.settings
        key = (s.criterion, s.seed if s.criterion in SEEDED else 0, len(job.ignored))
        if key not in self.values:
            values = job.rank()
            self.values[key] = (values, job.seconds["rank"])
        return self.values[key]

    def latency(self, pruned: nn.Module) -> Dict[str, Optional[float]]:
        if self.base_latency is None:
            return dict.fromkeys(LATENCY_KEYS)
        lat = eager_latency(pruned, self.settings.input_size, self.repeats)
        b1, b64 = lat[1]["median"], lat[64]["median"]
        ratio_b1, ratio_b64 = b1 / self.base_latency[1]["median"], b64 / self.base_latency[64]["median"]
        return dict(zip(LATENCY_KEYS, (b1, b64, ratio_b1, ratio_b64)))

    def base(self) -> Dict[str, Any]:
        """The base model as the results file records it (latency: medians in ms)."""
        b = self.baseline
        base: Dict[str, Any] = {"accuracy": b.accuracy, "params": b.params, "macs": b.macs}
        if self.base_latency is not None:
            base.update(latency_ms_b1=self.base_latency[1]["median"], latency_ms_b64=self.base_latency[64]["median"])
        base["threads"] = torch.get_num_threads()
        return base

    def describe_base(self) -> str:
        base = self.base()
        text = f"base: {base['accuracy']:.2f}% on {len(self.data.evaluation)} images, {base['params']} parameters"
        if "latency_ms_b1" in base:
            text += f", latency {base['latency_ms_b1']:.2f} ms (batch 1) / {base['latency_ms_b64']:.1f} ms (batch 64)"
        return text

    def run(
        self,
        cells: Sequence[Tuple[Any, ...]],
        cell: Callable[..., Dict[str, Any]],
        names: Sequence[str],
        out: Path,
        config: Dict[str, Any],
        rows: List[Dict[str, Any]],
        progress: bool,
    ) -> Dict[str, Any]:
        """Runs the pending ``cells`` after the finished ``rows``, rewriting
        ``out/results.json`` after each; returns the final document."""

        def save(row: Dict[str, Any]) -> None:
            rows.append(row)
            write_text_atomic(out / "results.json", json.dumps(document(config, self.base(), rows), indent=1))

        run_cells(cells, cell, save, names, progress)
        doc = document(config, self.base(), rows)
        write_text_atomic(out / "results.json", json.dumps(doc, indent=1))
        return doc
