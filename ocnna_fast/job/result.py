"""What a prune job measured: the base model once (``Baseline``), and per
job everything a report needs (``JobResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torch import nn

from ..budget.allocation import macs_and_params
from ..budget.search import BudgetResult
from ..data.evaluation import evaluate
from ..recovery.distill import state_sha256
from ..scoring.scores import Scores
from ..surgery.prune import count_params

__all__ = ["Baseline", "JobResult", "measure_baseline"]


@dataclass
class Baseline:
    """The unpruned model's accuracy, size and cost (measured once; a suite shares it)."""

    accuracy: float
    params: int
    macs: int


@dataclass
class JobResult:
    """Everything a report needs.  ``accuracy`` maps each stage measured
    (``base``, ``surgery``, ``recalibrated``, ``distilled``) to a top-1 %;
    ``seconds`` the time of each timed step."""

    pruned: nn.Module
    plan: Dict[str, Any]
    baseline: Baseline
    accuracy: Dict[str, float]
    params: int
    macs: int
    scores: Optional[Scores] = None
    recalibration: Optional[Dict[str, Any]] = None
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    budget: Optional[BudgetResult] = None

    @property
    def rpr(self) -> float:
        """Remaining-parameters ratio, pruned / base."""
        return self.params / self.baseline.params

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.baseline.macs

    @property
    def final_accuracy(self) -> float:
        """Accuracy after the last step that ran."""
        return list(self.accuracy.values())[-1]

    def report(self) -> Dict[str, Any]:
        """The measurements as the keys of ``report.json``."""
        acc = self.accuracy
        before = acc.get("recalibrated", acc["surgery"])
        return {
            "base_accuracy": self.baseline.accuracy,
            "pruned_accuracy_after_surgery": acc["surgery"],
            "bn_images": self.recalibration["images"] if self.recalibration else 0,
            "recalibration": self.recalibration["method"] if self.recalibration else None,
            "pruned_accuracy_before_finetune": before,
            "pruned_accuracy": self.final_accuracy,
            "accuracy_drop": self.baseline.accuracy - self.final_accuracy,
            "base_params": self.baseline.params,
            "pruned_params": self.params,
            "rpr": self.rpr,
            "base_macs": self.baseline.macs,
            "pruned_macs": self.macs,
            "macs_ratio": self.macs_ratio,
            "scoring_seconds": self.seconds.get("score", self.seconds.get("rank", 0.0)),
            "finetune_epochs": self.epochs,
            "finetune_seconds": self.seconds.get("distill", 0.0),
            "distill_history": self.history,
            "pruned_weights_sha256": state_sha256(self.pruned),
            **(self._budget_report() if self.budget is not None else {}),
        }

    def _budget_report(self) -> Dict[str, Any]:
        b = self.budget
        return {
            "target": str(b.target),
            "reached": b.reached,
            "allocation": b.allocation,
            "allocation_seconds": self.seconds.get("allocate", 0.0),
            "widths": {root: list(w) for root, w in b.widths.items()},
            "sensitivity": b.sensitivity,
            **({"target_measured": b.plan["budget"]["measured"]} if "measured" in b.plan.get("budget", {}) else {}),
        }


def measure_baseline(
    model: nn.Module, eval_set: Any, input_size: int, batch_size: int = 256, precision: Optional[str] = "fp32"
) -> Baseline:
    macs, _ = macs_and_params(model, input_size)
    return Baseline(evaluate(model, eval_set, batch_size=batch_size, precision=precision), count_params(model), macs)
