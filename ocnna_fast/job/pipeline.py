"""The prune job as named steps: score, rank, surgery, recalibrate, distill,
evaluate, measure.  ``ocnna-fast prune`` runs one job, ``ocnna-fast bench``
one per cell, and Python users the same object::

    job = PruneJob(model, JobData(evaluation=test, scoring=calib, calibration=calib, training=train),
                   JobSettings(k=40, criterion="ocnna", epochs=1), checkpoint_dir="ckpt")
    result = job.run()          # or call the steps one by one
    result.pruned, result.plan, result.accuracy, result.report()

Each step records what it measured on the job (``accuracy``, ``seconds``,
...) and the result carries all of it.  The long steps resume: with
``checkpoint_dir``, scoring checkpoints every batch and distillation every
epoch, and a rerun of the same job continues where an interrupted one
stopped.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.placement import model_device, resolve_device, to_device
from .._util.precision import resolve_precision
from ..budget.allocation import macs_and_params
from ..budget.latency import LatencyRatio
from ..budget.latency import check_settings as check_latency_settings
from ..budget.search import ALLOCATION_MEMO, BudgetResult, input_batches, prune_to_budget
from ..budget.spec import PruneSpec
from ..data.evaluation import evaluate
from ..data.loader import as_images
from ..data.tensorimages import image_side
from ..recovery.distill import distill
from ..recovery.recover import has_batchnorm, recalibrate
from ..scoring.scorer import score
from ..scoring.scores import Scores
from ..selection.criteria import CRITERIA, Context, FamilyCriterion, criterion_values
from ..surgery.prune import model_ignored_layers, prune
from .result import Baseline, JobResult, measure_baseline

__all__ = ["JobData", "JobSettings", "JobResult", "Baseline", "PruneJob", "measure_baseline", "macs_and_params"]

PathLike = Union[str, os.PathLike]


@dataclass
class JobData:
    """The image sets a job reads (``TensorImages`` or ``FolderImages``), by
    what they are used for: ``evaluation`` (top-1 accuracy at every stage),
    ``scoring`` (criteria that look at activations or gradients, and the
    loss of each sensitivity candidate), ``calibration`` (BatchNorm
    re-estimation or the folded correction after surgery, and inside each
    sensitivity candidate; ``None`` skips the step) and ``training``
    (distillation; ``None``: none).  ``evaluation``, ``scoring`` and
    ``calibration`` may also be a ``DataLoader`` or any re-iterable of
    ``(images, labels)`` batches (``data.loader.LoaderImages``)."""

    evaluation: Any
    scoring: Any = None
    calibration: Any = None
    training: Any = None

    def __post_init__(self) -> None:
        # a DataLoader (any re-iterable of batches) is read as the sets are; see data.loader
        for role in ("evaluation", "scoring", "calibration", "training"):
            setattr(self, role, as_images(getattr(self, role), role))


@dataclass(frozen=True)
class JobSettings(PruneSpec):
    """A ``PruneSpec`` (the rule or budget, criterion and recovery; its
    defaults and checks) and what the job adds: ``n_components`` for
    OCNNA-family criteria (``None``: the criterion's own), the distillation
    (``epochs``, ``lr``), the ``batch_size``, the ``seed`` (distillation
    order and augmentation, the ``random`` criterion), the input side in
    pixels (``None``: the evaluation images'; another is refused) and the
    ``device`` every step runs on (``"auto"``: a usable GPU, else the CPU;
    ``None``: where the model is) and the ``precision`` of distillation and
    evaluation (``fp32``, ``amp``; ``None``: amp on a GPU, fp32 on the CPU)."""

    n_components: Any = None
    epochs: int = 0
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0
    input_size: Optional[int] = None
    device: Optional[str] = None
    precision: Optional[str] = None


def _check_refit(settings: JobSettings, model: nn.Module, data: JobData) -> None:
    """A refit asked for must happen: it needs calibration images, and a
    folded-BatchNorm model is refitted through ``folded="refit"``."""
    if not settings.refit:
        return
    if data.calibration is None or len(data.calibration) == 0:
        raise ValueError("refit needs calibration images (JobData.calibration; on the command line --bn-images > 0)")
    if not has_batchnorm(model) and settings.folded != "refit":
        raise ValueError(
            f"refit with folded={settings.folded!r}: a model whose BatchNorm is folded into its convs is "
            "refitted by folded='refit' (--folded-correction refit)"
        )


class _Inputs:
    """The inputs (or labels) of a data set's batches on ``device``,
    re-iterable: each pass reads the set again, so a scoring pass over an
    image folder holds one batch at a time."""

    def __init__(self, data: Any, batch_size: int, part: int, device: torch.device) -> None:
        self.data, self.batch_size, self.part, self.device = data, batch_size, part, device

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (to_device(b[self.part], self.device) for b in self.data.batches(self.batch_size))


class PruneJob:
    """One prune job over ``model`` (never modified; put in eval mode).  On
    another ``settings.device`` than the model's, the job works on a copy
    there, and the pruned model is there.  ``ignored_layers``:
    modules whose output channels stay (default: what the model's
    ``ocnna_ignored_layers()`` names).  ``checkpoint_dir``: where scoring and
    distillation checkpoint, so a rerun resumes.  ``baseline``: the base
    model's measurements when the caller has them (a suite measures once)."""

    def __init__(
        self,
        model: nn.Module,
        data: JobData,
        settings: JobSettings = JobSettings(),
        *,
        ignored_layers: Optional[Iterable[nn.Module]] = None,
        checkpoint_dir: Optional[PathLike] = None,
        baseline: Optional[Baseline] = None,
        progress: bool = True,
    ) -> None:
        check_latency_settings(
            settings.latency_runtime, settings.latency_batch, deploy=settings.target_kind == "latency"
        )
        _check_refit(settings, model, data)
        side = image_side(data.evaluation)  # MACs, latency and the surgery's trace are at the images' size
        if settings.input_size not in (None, side):
            raise ValueError(f"input_size {settings.input_size} differs from the {side}px evaluation images")
        ignored = list(ignored_layers) if ignored_layers is not None else model_ignored_layers(model)
        self.device = resolve_device(settings.device) or model_device(model)
        self.model, self.ignored = _on_device(model.eval(), ignored, self.device)
        precision = resolve_precision(settings.precision, self.device)
        self.data = data
        self.settings = replace(settings, input_size=side, device=str(self.device), precision=precision)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.baseline, self.progress = baseline, progress
        self.example = torch.zeros(1, 3, self.settings.input_size, self.settings.input_size, device=self.device)
        self.scores: Optional[Scores] = None
        self.values: Optional[Dict[str, np.ndarray]] = None
        self.pruned: Optional[nn.Module] = None
        self.plan: Optional[Dict[str, Any]] = None
        self.accuracy: Dict[str, float] = {}
        self.recalibration: Optional[Dict[str, Any]] = None
        self.history: List[Dict[str, float]] = []
        self.seconds: Dict[str, float] = {}
        self.budget: Optional[BudgetResult] = None

    @property
    def _where(self) -> Dict[str, Any]:
        """Where and in what precision the job's evaluations run."""
        return {"device": self.device, "precision": self.settings.precision}

    # ------------------------------------------------------------ steps --
    def evaluate_base(self) -> Baseline:
        if self.baseline is None:
            self.baseline = measure_baseline(
                self.model, self.data.evaluation, self.settings.input_size, precision=self.settings.precision
            )
        self.accuracy["base"] = self.baseline.accuracy
        return self.baseline

    def _family(self) -> Optional[FamilyCriterion]:
        crit = CRITERIA[self.settings.criterion]
        if not isinstance(crit, FamilyCriterion):
            return None
        if self.settings.n_components is not None:
            crit = FamilyCriterion(crit.criterion, self.settings.n_components, crit.tap, crit.statistic)
        return crit

    def context(self) -> Context:
        """What a criterion may look at: the model, the scoring batches and labels, the seed."""
        if self.data.scoring is None:
            raise ValueError("this criterion needs scoring images: JobData(scoring=...)")
        bs = self.settings.batch_size
        return Context(
            self.model,
            _Inputs(self.data.scoring, bs, 0, self.device),
            _Inputs(self.data.scoring, bs, 1, self.device),
            self.example,
            self.ignored,
            seed=self.settings.seed,
        )

    def score(self) -> Scores:
        """OCNNA-family criteria: one streamed pass over the scoring images
        (checkpointed with ``checkpoint_dir``); the scores rank the filters."""
        crit = self._family()
        if crit is None:
            raise ValueError(f"criterion {self.settings.criterion!r} is not scored by OCNNA's pass; call rank()")
        ckpt = self.checkpoint_dir / "scores.ckpt" if self.checkpoint_dir is not None else None
        t = time.perf_counter()
        self.scores = score(
            self.model,
            _Inputs(self.data.scoring, self.settings.batch_size, 0, self.device),
            n_components=crit.n_components,
            tap=crit.tap,
            statistic=crit.statistic,
            progress=self.progress,
            checkpoint=str(ckpt) if ckpt is not None else None,
        )
        self.seconds["score"] = time.perf_counter() - t
        return self.scores

    def rank(self, values: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Per-group values of the criterion (higher = keep), or ``values``
        already computed for it (a suite ranks once per criterion and seed)."""
        if values is None:
            t = time.perf_counter()
            family = self._family()
            if family is not None and self.scores is not None:  # scored already: the same pass ranks
                values = family.values(self.context(), self.scores)
            else:
                values = criterion_values(self.settings.criterion, self.context())
            self.seconds["rank"] = time.perf_counter() - t
        self.values = values
        return values

    def surgery(self) -> Tuple[nn.Module, Dict[str, Any]]:
        """The physically smaller model, from the scores (``score()``) or
        the values (``rank()``), and the accuracy right after it."""
        s = self.settings
        if s.target is not None:
            budget = self.allocate()
            self.pruned, self.plan = budget.pruned, budget.plan
        elif self.scores is not None and self.values is None:
            crit = FAMILY_OF.get(s.criterion, "ocnna")
            self.pruned, self.plan = prune(
                self.model, self.scores, s.k, self.example, criterion=crit, ignored_layers=self.ignored
            )
        else:
            values = self.values if self.values is not None else self.rank()
            self.pruned, self.plan = prune(
                self.model, None, s.k, self.example, ignored_layers=self.ignored, importance=values, rule="count"
            )
        self.accuracy["surgery"] = evaluate(self.pruned, self.data.evaluation, **self._where)
        return self.pruned, self.plan

    def adopt(self, pruned: nn.Module, plan: Dict[str, Any]) -> None:
        """A pruned copy built elsewhere (another pruner's widths rebuilt by
        ``pruning.prune(..., keep=...)``) takes surgery's place: the later
        steps recalibrate, distill and measure it as they would their own."""
        self.pruned, self.plan = pruned, plan
        self.accuracy["surgery"] = evaluate(pruned, self.data.evaluation, **self._where)

    def allocate(self) -> BudgetResult:
        """Per-group widths meeting ``settings.target`` (checked by a real
        count within 2%, or a latency measured side by side within 5%), the
        copy pruned to them: what ``surgery`` keeps."""
        s = self.settings
        values = self.values if self.values is not None else self.rank()
        calibration = evaluation = None
        if s.allocation == "sensitivity":
            if self.data.calibration is None or self.data.scoring is None:
                raise ValueError(
                    "the sensitivity allocation needs calibration and scoring images: JobData(calibration=..., scoring=...) "
                    "(--bn-images and --score-images on the command line)"
                )
            calibration = input_batches(self.data.calibration, s.batch_size, s.sensitivity_images)
            evaluation = input_batches(self.data.scoring, s.batch_size, s.sensitivity_images)
        t = time.perf_counter()
        measure = None
        if s.target_kind == "latency":
            measure = LatencyRatio(self.model, s.input_size, runtime=s.latency_runtime, batch=s.latency_batch)
        memo = self.checkpoint_dir / ALLOCATION_MEMO if self.checkpoint_dir is not None else None
        self.budget = prune_to_budget(
            self.model, values, self.example, PruneSpec(**s.prune_fields()), ignored_layers=self.ignored,
            calibration=calibration, evaluation=evaluation, seed=s.seed, measure=measure, progress=self.progress,
            memo=memo,
        )  # fmt: skip
        self.seconds["allocate"] = time.perf_counter() - t
        return self.budget

    def recalibrate(self) -> Optional[Dict[str, Any]]:
        """BatchNorm re-estimation (bias compensation on folded-BatchNorm
        models) on the calibration images, and the accuracy after it."""
        if self.data.calibration is None or len(self.data.calibration) == 0:
            return None
        pruned, plan = self._surgered()
        # re-iterable: folded models read it twice
        batches = _Inputs(self.data.calibration, self.settings.batch_size, 0, self.device)
        self.recalibration = recalibrate(
            pruned,
            self.model,
            plan,
            batches,
            progress=self.progress,
            folded=self.settings.folded,
            refit=self.settings.refit,
        )
        self.accuracy["recalibrated"] = evaluate(pruned, self.data.evaluation, **self._where)
        return self.recalibration

    def distill(self) -> List[Dict[str, float]]:
        """Knowledge distillation from the base model (checkpointed every
        epoch with ``checkpoint_dir``), and the accuracy after it."""
        s = self.settings
        if s.epochs <= 0:
            return []
        if self.data.training is None:
            raise ValueError("distillation needs training images: JobData(training=...)")
        pruned, _ = self._surgered()
        t = time.perf_counter()
        self.history = distill(
            pruned,
            self.model,
            self.data.training,
            epochs=s.epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            seed=s.seed,
            device=self.device,
            precision=s.precision,
            checkpoint_dir=self.checkpoint_dir / "distill" if self.checkpoint_dir is not None else None,
            progress=self.progress,
        )
        self.seconds["distill"] = time.perf_counter() - t
        self.accuracy["distilled"] = evaluate(pruned, self.data.evaluation, **self._where)
        return self.history

    def result(self) -> JobResult:
        """The measurements so far (the model's size is counted here)."""
        pruned, plan = self._surgered()
        baseline = self.evaluate_base() if self.baseline is None else self.baseline
        macs, params = macs_and_params(pruned, self.settings.input_size)
        accuracy = {"base": baseline.accuracy, **{k: v for k, v in self.accuracy.items() if k != "base"}}
        return JobResult(
            pruned,
            plan,
            baseline,
            accuracy,
            params,
            macs,
            self.scores,
            self.recalibration,
            self.history,
            dict(self.seconds),
            epochs=self.settings.epochs,
            budget=self.budget,
        )

    def run(self) -> JobResult:
        """Every step in order: base, score (OCNNA family) or rank, surgery,
        recalibrate, distill."""
        self.evaluate_base()
        if self.values is None and self.scores is None and self._family() is not None:
            self.score()
        self.surgery()
        self.recalibrate()
        self.distill()
        return self.result()

    def _surgered(self) -> Tuple[nn.Module, Dict[str, Any]]:
        if self.pruned is None or self.plan is None:
            raise ValueError("run surgery() first")
        return self.pruned, self.plan


def _on_device(model: nn.Module, ignored: List[nn.Module], device: torch.device):
    """``model`` on ``device``: itself when it is there, else a copy moved
    there (the caller's stays put), with ``ignored`` mapped to the copy's modules."""
    if model_device(model) == device:
        return model, ignored
    names = {m: n for n, m in model.named_modules()}
    copy_ = copy.deepcopy(model).to(device)
    modules = dict(copy_.named_modules())
    return copy_, [modules[names[m]] for m in ignored if m in names]


# the statistic of ``pruning.FAMILY`` each OCNNA-family criterion ranks by
FAMILY_OF = {name: c.criterion for name, c in CRITERIA.items() if isinstance(c, FamilyCriterion)}
