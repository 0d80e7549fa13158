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

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .atomic import atomic_path
from .distributed import all_reduce_sum, barrier, rank_and_world
from .module_state import restore_training_flags, training_flags

__all__ = ["distill", "finetune", "evaluate", "TensorImages", "distillation_loss", "state_sha256", "TrainingDiverged"]

PathLike = Union[str, os.PathLike]


class TensorImages:
    """uint8 images ``(N, 3, H, W)`` and labels, normalised on the fly, with
    optional CIFAR-style augmentation (4-pixel padded random crop, horizontal
    flip) drawn from a generator the caller seeds."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool = False) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError("images must be (N, C, H, W) with one label each")
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the images, labels, normalisation and augmentation flag:
        what a distillation checkpoint records of its data."""
        return validate.tensors_sha256(
            {"images": self.images, "labels": self.labels, "mean": self.mean, "std": self.std},
            [("augment", str(self.augment))],
        )

    def batch(
        self, idx: torch.Tensor, gen: Optional[torch.Generator] = None, shard: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx``, normalised (and augmented from ``gen``).  With
        ``shard=(rank, world)`` only positions ``rank::world`` of the batch,
        augmented with the draws of the whole batch, so the processes of a
        sharded run together see exactly what one process would."""
        n = int(idx.shape[0])
        if self.augment:
            if gen is None:
                raise ValueError("augmentation needs a generator")
            dy = torch.randint(0, 9, (n,), generator=gen)
            dx = torch.randint(0, 9, (n,), generator=gen)
            flip = torch.rand(n, generator=gen) < 0.5
        mine = slice(shard[0], None, shard[1]) if shard is not None else slice(None)
        idx = idx[mine]
        x = self.images[idx].float().div_(255.0)
        if self.augment:
            dy, dx, flip = dy[mine], dx[mine], flip[mine]
            _, _, h, w = x.shape
            padded = F.pad(x, (4, 4, 4, 4))
            out = torch.empty_like(x)
            for i in range(x.shape[0]):
                crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
                out[i] = crop.flip(-1) if flip[i] else crop
            x = out
        return (x - self.mean) / self.std, self.labels[idx]

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        gen: Optional[torch.Generator] = None,
        shard: Optional[Tuple[int, int]] = None,
    ):
        """Batches of ``batch_size`` in order, or shuffled from ``gen``; with
        ``shard=(rank, world)``, this process's share of each (see ``batch``)."""
        order = torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))
        for s in range(0, len(self), batch_size):
            yield self.batch(order[s : s + batch_size], gen, shard)


def evaluate(
    model: nn.Module,
    data: TensorImages,
    batch_size: int = 256,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> float:
    """Top-1 accuracy in percent; every module's training flag is restored.
    Empty data is an error (an accuracy of no images means nothing)."""
    batch_size = validate.positive_int(batch_size, "batch_size")
    if len(data) == 0:
        raise ValueError("no images to evaluate on")
    was = training_flags(model)
    model.eval()
    correct = 0
    it = data.batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=math.ceil(len(data) / batch_size), desc="evaluate", unit="batch")
    try:
        with torch.no_grad():
            for x, y in it:
                correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    finally:
        restore_training_flags(was)
    return 100.0 * correct / len(data)


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
    train_data: TensorImages,
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
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    eval_data: Optional[TensorImages] = None,
    stop_after_epoch: Optional[int] = None,
) -> List[Dict[str, float]]:
    """Trains ``student`` in place for ``epochs`` epochs; returns per-epoch history.

    ``teacher=None`` (or ``alpha=0``) is plain fine-tuning with cross-entropy.
    With ``checkpoint_dir``, ``checkpoint.pt`` is written (atomically) after
    every epoch and an existing one is resumed from; a checkpoint from another
    run configuration is refused.  ``stop_after_epoch`` ends the run early
    (as an interruption would) - for tests and for splitting long runs.

    Under ``torchrun`` (a default process group of several processes) the
    student trains in ``DistributedDataParallel``: ``batch_size`` is the
    *global* batch, each process takes positions ``rank::world`` of every
    batch of the shared seeded order (``DistributedSampler``'s split), and
    losses are weighted so the averaged gradient is the whole batch's.  Without
    BatchNorm in training mode the weights equal a one-process run's up to
    float rounding; BatchNorm normalises with each process's own share, as
    DDP does.  Rank 0 alone writes the checkpoint; every process resumes from it.
    """
    _check_settings(epochs, lr, temperature, alpha, batch_size, momentum, weight_decay, seed)
    if len(train_data) == 0:
        raise ValueError("train_data is empty")
    rank, world = rank_and_world()
    if world > 1:
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the {world} processes")
        if 0 < len(train_data) % batch_size < world:
            raise ValueError(
                f"the last batch of {len(train_data) % batch_size} images cannot be shared by "
                f"{world} processes: change the number of training images or batch_size"
            )
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    config = {
        "epochs": epochs,
        "lr": lr,
        "temperature": temperature,
        "alpha": alpha,
        "batch_size": batch_size,
        "seed": seed,
        "n": len(train_data),
        "distill": teacher is not None,
    }
    if world > 1:  # BatchNorm sees each process's share: a run resumes with as many processes
        config["world_size"] = world
    if checkpoint_dir is not None:
        # what the run belongs to: the student as it starts (its shapes are the
        # plan, its values the kept weights), the teacher and the data; a
        # checkpoint of another run is refused, never resumed into this one
        config.update(
            student_sha256=state_sha256(student),
            data_sha256=train_data.fingerprint(),
            teacher_sha256=state_sha256(teacher) if teacher is not None else None,
        )
    history: List[Dict[str, float]] = []
    start = 0
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            ck = validate.torch_load_safely(ckpt_path, "checkpoint")
            if not isinstance(ck, dict) or ck.get("config") != config:
                theirs = ck.get("config") if isinstance(ck, dict) else None
                theirs = theirs if isinstance(theirs, dict) else {}
                differ = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
                raise ValueError(
                    f"checkpoint {ckpt_path} belongs to another run (differs in: {', '.join(differ) or 'format'}); "
                    "remove it, or use another checkpoint folder"
                )
            student.load_state_dict(ck["student"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start, history = int(ck["epoch"]), list(ck["history"])
    net: nn.Module = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = torch.device(device).type == "cuda"
        net = DistributedDataParallel(student, device_ids=[torch.device(device)] if on_gpu else None)
    shard = (rank, world) if world > 1 else None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=(epochs - start) * steps_per_epoch, desc="distill" if teacher is not None else "finetune", unit="step"
        )
    try:
        for epoch in range(start, epochs):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            # the state to fall back to if this epoch diverges (the checkpoint on disk is the same)
            good = {k: v.detach().clone() for k, v in student.state_dict().items()}
            net.train()
            tot_loss = tot_correct = seen = 0
            for step, (x, y) in enumerate(train_data.batches(batch_size, shuffle=True, gen=gen, shard=shard)):
                x, y = x.to(device), y.to(device)
                logits = net(x)
                t_logits = None
                if teacher is not None and alpha > 0:
                    with torch.no_grad():
                        t_logits = teacher(x)
                loss = distillation_loss(logits, t_logits, y, temperature, alpha)
                opt.zero_grad(set_to_none=True)
                if world > 1:
                    # DDP averages the processes' gradients; weighting each
                    # share's mean by its size makes that the whole batch's mean
                    whole = min(batch_size, len(train_data) - step * batch_size)
                    (loss * (y.shape[0] * world / whole)).backward()
                else:
                    loss.backward()
                opt.step()
                sched.step()
                n = int(y.shape[0])
                seen += n
                value = float(loss.detach())
                if world == 1 and not math.isfinite(value):  # under DDP every rank checks at the epoch's end
                    _diverged(student, good, epoch, f"step {step + 1}", lr, ckpt_path)
                tot_loss += value * n
                tot_correct += int((logits.argmax(1) == y).sum())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        epoch=epoch + 1, loss=f"{tot_loss / seen:.3f}", acc=f"{100 * tot_correct / seen:.1f}"
                    )
            if world > 1:
                tot_loss, tot_correct, seen = all_reduce_sum(
                    torch.tensor([tot_loss, tot_correct, seen], dtype=torch.float64)
                ).tolist()
            if not math.isfinite(tot_loss) or not all(bool(torch.isfinite(p).all()) for p in student.parameters()):
                _diverged(student, good, epoch, "its end", lr, ckpt_path)
            rec = {"epoch": epoch + 1, "loss": tot_loss / seen, "train_accuracy": 100.0 * tot_correct / seen}
            if eval_data is not None:
                rec["eval_accuracy"] = evaluate(student, eval_data, device=device)
            history.append(rec)
            if ckpt_path is not None:
                if rank == 0:
                    _save_atomic(
                        {
                            "config": config,
                            "epoch": epoch + 1,
                            "history": history,
                            "student": student.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                        },
                        ckpt_path,
                    )
                barrier()  # no process runs ahead of the checkpoint it would resume from
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break
    finally:
        if bar is not None:
            bar.close()
    student.eval()
    return history


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
