"""Knowledge distillation from the original model into the pruned one, and
plain fine-tuning, with per-epoch checkpoints and exact resume.

The loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
(Hinton et al. 2015).  SGD with momentum and a per-step cosine schedule.

Exact resume: the shuffling and the augmentation of epoch ``e`` are drawn from
generators seeded by ``(seed, e)``, and a checkpoint holds the student,
optimizer and scheduler state after a whole epoch, so an interrupted run that
is resumed ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._util import validate
from .._util.atomic import atomic_path
from .._util.distributed import all_reduce_sum, barrier, rank_and_world
from .._util.placement import model_device, resolve_device, to_device
from .._util.precision import autocast, grad_scaler, resolve_precision
from ..data.evaluation import evaluate
from ..data.tensorimages import TensorImages

__all__ = ["distill", "finetune", "evaluate", "TensorImages", "distillation_loss", "state_sha256", "TrainingDiverged"]

PathLike = Union[str, os.PathLike]


def state_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, values): it
    names both the architecture (a plan changes the shapes) and the weights."""
    return validate.tensors_sha256(model.state_dict())


def distillation_loss(
    logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton et al.'s loss: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
    (1 - alpha) * CE(s, y)``, KL averaged over the batch.  The ``T^2`` keeps
    the soft term's gradients on the scale of the hard term's whatever T is.
    ``teacher_logits=None`` (or ``alpha=0``) is plain cross-entropy."""
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None or alpha == 0:
        return ce
    kd = (
        F.kl_div(
            F.log_softmax(logits / temperature, 1),
            F.log_softmax(teacher_logits / temperature, 1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    return alpha * kd + (1 - alpha) * ce


def _check_settings(
    epochs: Any, lr: Any, temperature: Any, alpha: Any, batch_size: Any, momentum: Any, weight_decay: Any, seed: Any
) -> None:
    """Every setting finite and in range before anything trains: a NaN
    learning rate compares false with every bound and would train NaNs."""
    validate.as_count(epochs, "epochs")
    validate.positive_int(batch_size, "batch_size")
    validate.as_count(seed, "seed")
    if seed >= 2**31:
        raise ValueError(f"seed must be < 2**31, got {seed}")
    for name, value, low, high, low_open in (
        ("lr", lr, 0.0, math.inf, True),
        ("temperature", temperature, 0.0, math.inf, True),
        ("alpha", alpha, 0.0, 1.0, False),
        ("momentum", momentum, 0.0, 1.0, False),
        ("weight_decay", weight_decay, 0.0, math.inf, False),
    ):
        validate.finite_number(value, name, low, high, low_open=low_open)


def _save_atomic(obj: Dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def distill(
    student: nn.Module,
    teacher: Optional[nn.Module],
    train_data: Any,
    *,
    epochs: int,
    lr: float,
    temperature: float = 4.0,
    alpha: float = 0.9,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    checkpoint_dir: Optional[PathLike] = None,
    device: Optional[Union[str, torch.device]] = None,
    precision: Optional[str] = None,
    progress: bool = True,
    eval_data: Optional[Any] = None,
    stop_after_epoch: Optional[int] = None,
) -> List[Dict[str, float]]:
    """Trains ``student`` in place for ``epochs`` epochs on ``device``
    (default: where the student is; it is moved there and stays; a teacher
    elsewhere is copied there), its forward passes in ``precision``
    (``fp32``; ``amp``: autocast, bfloat16 or float16 with a gradient
    scaler; default: amp on a GPU, fp32 on the CPU); returns per-epoch
    history.

    ``teacher=None`` (or ``alpha=0``) is plain fine-tuning with cross-entropy.
    With ``checkpoint_dir``, ``checkpoint.pt`` is written (atomically) after
    every epoch and an existing one is resumed from; a checkpoint from another
    run configuration is refused.  ``stop_after_epoch`` ends the run early
    (as an interruption would) - for tests and for splitting long runs.

    Under ``torchrun`` the student trains in ``DistributedDataParallel``:
    ``batch_size`` is the *global* batch, each process takes positions
    ``rank::world`` of every batch of the shared seeded order, and losses are
    weighted so the averaged gradient is the whole batch's (without BatchNorm
    the weights equal a one-process run's up to rounding; BatchNorm sees each
    process's share, as in DDP).  Rank 0 writes the checkpoint; all resume.
    """
    _check_settings(epochs, lr, temperature, alpha, batch_size, momentum, weight_decay, seed)
    rank, world = rank_and_world()
    _check_shares(len(train_data), batch_size, world)
    device = resolve_device(device) or model_device(student)
    teacher = _placed(student, teacher, device)
    run = _Run(student, teacher, train_data, epochs, lr, temperature, alpha, batch_size, seed, device, (rank, world))
    run.precision = resolve_precision(precision, device)
    run.scaler, _ = grad_scaler(run.precision, device)
    run.optimizer(momentum, weight_decay)
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    start = run.resume(ckpt) if ckpt is not None else 0
    run.wrap()
    bar = _bar(progress and rank == 0, (epochs - start) * run.steps_per_epoch, teacher is not None)
    try:
        run.epochs_from(start, bar, ckpt, eval_data, stop_after_epoch)
    finally:
        if bar is not None:
            bar.close()
    student.eval()
    return run.history


def _placed(student: nn.Module, teacher: Optional[nn.Module], device: torch.device) -> Optional[nn.Module]:
    """The student moved to ``device``; the teacher there too, as a copy when
    it was elsewhere (the caller's teacher stays where it is)."""
    student.to(device)
    if teacher is not None and model_device(teacher) != device:
        teacher = copy.deepcopy(teacher)
    return teacher.to(device).eval() if teacher is not None else None


def _check_shares(n: int, batch_size: int, world: int) -> None:
    if n == 0:
        raise ValueError("train_data is empty")
    if world > 1:
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the {world} processes")
        if 0 < n % batch_size < world:
            raise ValueError(
                f"the last batch of {n % batch_size} images cannot be shared by "
                f"{world} processes: change the number of training images or batch_size"
            )


def _bar(show: bool, total: int, distilling: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="distill" if distilling else "finetune", unit="step")


class _Run:
    """One training run's state and its steps: the optimizer and schedule,
    resuming from a checkpoint, one epoch, saving a checkpoint."""

    def __init__(self, student, teacher, data, epochs, lr, temperature, alpha, batch_size, seed, device, rw) -> None:
        self.student, self.teacher, self.data = student, teacher, data
        self.epochs, self.lr, self.temperature, self.alpha = epochs, lr, temperature, alpha
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world = rw
        self.steps_per_epoch = math.ceil(len(data) / batch_size)
        self.history: List[Dict[str, float]] = []
        self.net: nn.Module = student
        self.precision, self.scaler = "fp32", None

    def optimizer(self, momentum: float, weight_decay: float) -> None:
        self.opt = torch.optim.SGD(
            self.student.parameters(), lr=self.lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
        )
        total = max(1, self.epochs * self.steps_per_epoch)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)

    def wrap(self) -> None:
        """Under torchrun, the student in DistributedDataParallel (after any resume loaded its weights)."""
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = torch.device(self.device).type == "cuda"
            self.net = DistributedDataParallel(self.student, device_ids=[torch.device(self.device)] if on_gpu else None)

    def config(self) -> Dict[str, Any]:
        """What the run belongs to: its settings, the student as it starts
        (its shapes are the plan, its values the kept weights), the teacher
        and the data; a checkpoint of another run is refused, never resumed."""
        config = {
            "epochs": self.epochs,
            "lr": self.lr,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "n": len(self.data),
            "distill": self.teacher is not None,
        }
        if self.world > 1:  # BatchNorm sees each process's share: a run resumes with as many processes
            config["world_size"] = self.world
        if self.precision != "fp32":  # (fp32 runs' checkpoints predate the setting)
            config["precision"] = self.precision
        config.update(
            student_sha256=state_sha256(self.student),
            data_sha256=self.data.fingerprint(),
            teacher_sha256=state_sha256(self.teacher) if self.teacher is not None else None,
        )
        return config

    def resume(self, ckpt: Path) -> int:
        """The first epoch to run: 0, or the one after an earlier run's checkpoint."""
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        self._config = self.config()  # of the student as it starts, before any checkpoint loads
        if not ckpt.exists():
            return 0
        ck = validate.torch_load_safely(ckpt, "checkpoint")
        if not isinstance(ck, dict) or ck.get("config") != self._config:
            theirs = ck.get("config") if isinstance(ck, dict) else None
            theirs = theirs if isinstance(theirs, dict) else {}
            differ = sorted(k for k in set(self._config) | set(theirs) if self._config.get(k) != theirs.get(k))
            raise ValueError(
                f"checkpoint {ckpt} belongs to another run (differs in: {', '.join(differ) or 'format'}); "
                "remove it, or use another checkpoint folder"
            )
        self.student.load_state_dict(ck["student"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        if self.scaler is not None and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        self.history = list(ck["history"])
        return int(ck["epoch"])

    def epochs_from(self, start: int, bar, ckpt: Optional[Path], eval_data, stop_after_epoch) -> None:
        """The epochs from ``start``, each evaluated on ``eval_data`` (if any) and checkpointed."""
        for epoch in range(start, self.epochs):
            self.train_epoch(epoch, bar, ckpt)
            if eval_data is not None:
                accuracy = evaluate(self.student, eval_data, device=self.device, precision=self.precision)
                self.history[-1]["eval_accuracy"] = accuracy
            if ckpt is not None:
                self.save(ckpt, epoch)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break

    def train_epoch(self, epoch: int, bar, ckpt: Optional[Path]) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # the state to fall back to if this epoch diverges (the checkpoint on disk is the same)
        good = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self.net.train()
        tot_loss = tot_correct = seen = 0
        shard = (self.rank, self.world) if self.world > 1 else None
        for step, (x, y) in enumerate(self.data.batches(self.batch_size, shuffle=True, gen=gen, shard=shard)):
            y = to_device(y, self.device)
            logits, loss = self._step(to_device(x, self.device), y, step)
            n = int(y.shape[0])
            seen += n
            value = float(loss.detach())  # the one synchronisation of a step: divergence is caught where it starts
            if self.world == 1 and not math.isfinite(value):  # under DDP every rank checks at the epoch's end
                _diverged(self.student, good, epoch, f"step {step + 1}", self.lr, ckpt)
            tot_loss += value * n
            hits = (logits.argmax(1) == y).sum()
            tot_correct = hits + tot_correct
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:  # the accuracy is a device count: read it now and then, not every step
                    bar.set_postfix(
                        epoch=epoch + 1, loss=f"{tot_loss / seen:.3f}", acc=f"{100 * int(tot_correct) / seen:.1f}"
                    )
        tot_correct = int(tot_correct)
        if self.world > 1:
            totals = torch.tensor([tot_loss, tot_correct, seen], dtype=torch.float64)
            tot_loss, tot_correct, seen = all_reduce_sum(totals).tolist()
        if not math.isfinite(tot_loss) or not all(bool(torch.isfinite(p).all()) for p in self.student.parameters()):
            _diverged(self.student, good, epoch, "its end", self.lr, ckpt)
        self.history.append({"epoch": epoch + 1, "loss": tot_loss / seen, "train_accuracy": 100.0 * tot_correct / seen})

    def _step(self, x: torch.Tensor, y: torch.Tensor, step: int):
        with autocast(self.precision, self.device):
            logits = self.net(x)
            t_logits = None
            if self.teacher is not None and self.alpha > 0:
                with torch.no_grad():
                    t_logits = self.teacher(x)
        # the loss (a softmax over logits, a temperature) in float32 whatever the convs ran in
        t_logits = t_logits.float() if t_logits is not None else None
        loss = distillation_loss(logits.float(), t_logits, y, self.temperature, self.alpha)
        self.opt.zero_grad(set_to_none=True)
        if self.world > 1:
            # DDP averages the processes' gradients; weighting each
            # share's mean by its size makes that the whole batch's mean
            whole = min(self.batch_size, len(self.data) - step * self.batch_size)
            total = loss * (y.shape[0] * self.world / whole)
        else:
            total = loss
        if self.scaler is not None:  # float16: gradients scaled up so they do not underflow, then back
            self.scaler.scale(total).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            total.backward()
            self.opt.step()
        self.sched.step()
        return logits, loss

    def save(self, ckpt: Path, epoch: int) -> None:
        if self.rank == 0:
            state = {
                "config": self._config,
                "epoch": epoch + 1,
                "history": self.history,
                "student": self.student.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
            }
            if self.scaler is not None:  # float16's loss scale: a resumed run goes on with it, not from scratch
                state["scaler"] = self.scaler.state_dict()
            _save_atomic(state, ckpt)
        barrier()  # no process runs ahead of the checkpoint it would resume from


class TrainingDiverged(ValueError):
    """The loss or the weights became non-finite during training."""


def _diverged(student: nn.Module, good: Dict[str, torch.Tensor], epoch: int, where: str, lr: float, ckpt) -> None:
    """Puts back the student of the last finished epoch and stops the run:
    a non-finite loss or weight is never trained on, saved or returned."""
    student.load_state_dict(good)
    student.eval()
    kept = f"; {ckpt} (after epoch {epoch}) is kept" if ckpt is not None and ckpt.exists() else ""
    raise TrainingDiverged(
        f"training diverged: the loss or the weights became non-finite in epoch {epoch + 1} at {where} "
        f"(learning rate {lr:g} too high?); the student is back to its state after epoch {epoch}{kept}"
    )


def finetune(model: nn.Module, train_data: TensorImages, **kwargs: Any) -> List[Dict[str, float]]:
    """Plain fine-tuning (cross-entropy only): ``distill`` without a teacher."""
    kwargs.pop("alpha", None)
    return distill(model, None, train_data, alpha=0.0, **kwargs)
