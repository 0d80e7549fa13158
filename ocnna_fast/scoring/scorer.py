"""``score()``: one pass over the data scores every prunable conv at once.

Forward hooks hand each conv's output to that layer's ``FilterStats``; the
model runs in ``eval()`` under ``no_grad()`` and is left exactly as found
(training flag, device, no hooks), also when something fails.

Scoring can overlap the forward pass (``overlap``, on by default).  On the CPU
the hooks hand the activations to a background thread, so the forward pass
keeps torch's threads busy instead of leaving them to spin at every hook.  On
CUDA the scoring kernels go to a side stream, where the memory-bound reads of
the activations run beside the compute-bound convolutions instead of after
them.  A conv whose output the model later modifies in place
(``conv -> ReLU(inplace=True)``) is found by a one-image probe pass before
scoring starts, and is scored in place (on the CPU: in the hook; on CUDA: on
the current stream, ahead of the in-place op).
"""

from __future__ import annotations

import itertools
import os
import warnings
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .. import _native
from .._util.distributed import share_of
from .._util.module_state import restore_training_flags, training_flags
from .._util.placement import input_of as _input_of
from .._util.placement import placement as _placement
from .._util.validate import positive_int
from ..errors import add_note as _add_note
from . import runstate
from .layers import prunable_convs
from .overlap import Overlap, SideStream
from .scores import Scores, check_image_count
from .stats import FilterStats
from .taps import scored_maps

__all__ = ["score"]


def _total_images(data: Any, max_images: Optional[int]) -> Optional[int]:
    total = None
    dataset = getattr(data, "dataset", None)
    try:
        total = len(dataset) if dataset is not None else None
    except TypeError:
        total = None
    if max_images is not None:
        total = max_images if total is None else min(total, max_images)
    return total


# Experimental (benchmarks/bench_gpu.py measures it): when set, score() runs
# the forward pass on a stream of this priority (lower is more urgent; the
# scoring side stream has the default, 0), so the block scheduler hands SMs to
# the forward kernels first and the scoring reads fill the gaps.  Off by
# default until an H100 run shows it pays.
_FORWARD_PRIORITY: Optional[int] = None


class _ScoringRun:
    """One ``score()`` pass: the accumulators' hooks on the model, the worker
    that folds batches beside the forward pass, the checkpoint, and the
    model's state, restored on exit (hooks removed, train/eval flags and
    device as found) whatever happens.  Used as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        stats: Dict[str, FilterStats],
        taps: Dict[str, Any],
        home: torch.device,
        run_device: torch.device,
        ckpt_path: Optional[str],
        fingerprint: Dict[str, Any],
    ) -> None:
        self.model, self.stats, self.taps = model, stats, taps
        self.home, self.run_device = home, run_device
        self.ckpt_path, self.fingerprint = ckpt_path, fingerprint
        self.seen = 0  # images scored, resumed ones included
        self.done_batches = 0  # batches consumed from data, resumed ones included
        self.worker: Union[None, Overlap, SideStream] = None
        self._calls: Dict[str, int] = {}
        self._probe: Dict[str, Any] = {}  # probe pass: name -> (output, its version at the hook)
        self._probing = False
        # outputs a later op edits in place are scored inside the hook, before the edit
        self._in_place: Dict[str, bool] = {name: True for name in stats}
        self._handles: list = []
        self._was_training: Any = None
        if ckpt_path is not None and os.path.exists(ckpt_path):
            self.done_batches, self.seen = runstate.load_checkpoint(ckpt_path, stats, fingerprint)

    # ------------------------------------------------------------ hooks --
    def _hook(self, name: str, act=None):
        st = self.stats[name]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._probing:
                if isinstance(output, torch.Tensor) and act is None:
                    self._probe[name] = (output, output._version)
                return
            if act is not None and isinstance(output, torch.Tensor):
                output = act(output)  # a new tensor: a later in-place edit of the module's output cannot reach it
            self._calls[name] = self._calls.get(name, 0) + 1
            if self.worker is not None and not self._in_place[name] and isinstance(output, torch.Tensor):
                self.worker.submit(st, output)
            else:
                st.update(output)

        return hook

    def __enter__(self) -> "_ScoringRun":
        self._was_training = training_flags(self.model)
        try:
            if self.run_device != self.home:
                self.model.to(self.run_device)
            modules = dict(self.model.named_modules())
            self._handles = [
                modules[self.taps[n][0]].register_forward_hook(self._hook(n, self.taps[n][1])) for n in self.stats
            ]
            self.model.eval()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._restore()
        except BaseException as restore_error:
            if exc is None:
                raise
            # the first error is the cause: it propagates, the restore error is attached to it
            _add_note(exc, f"and restoring the model afterwards failed too: {restore_error!r}")

    def _restore(self) -> None:
        self._probing = False
        if isinstance(self.worker, SideStream):
            self.worker.drain()  # nothing may reuse the accumulators while the side stream writes them
        elif self.worker is not None:
            self.worker.close()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._was_training is not None:
            restore_training_flags(self._was_training)
        if self.run_device != self.home:
            self.model.to(self.home)

    # ------------------------------------------------------------ steps --
    def resume(self, batches):
        """``batches`` past those a resumed checkpoint already scored."""
        for _ in range(self.done_batches):
            if next(batches, None) is None:
                raise ValueError(f"checkpoint {self.ckpt_path} is past the end of data; was data changed?")
        return batches

    def probe(self, batches):
        """One image through the model, to see which conv outputs it edits in
        place; then the worker that scores the others beside the forward pass.
        Returns the batches, the first one put back."""
        first = next(batches, None)
        if first is None:
            return batches
        self._probing = True
        try:
            with torch.no_grad():
                self.model(_input_of(first)[:1].to(self.run_device))
        finally:
            self._probing = False
        for name, (out, version) in self._probe.items():
            self._in_place[name] = out._version != version
        for name, (_, act) in self.taps.items():
            if act is not None:  # scored on a tensor of its own (see the hook)
                self._in_place[name] = False
        self._probe.clear()
        self.worker = Overlap() if self.run_device.type == "cpu" else SideStream(self.run_device, _FORWARD_PRIORITY)
        return itertools.chain([first], batches)

    def run_batch(self, x: torch.Tensor, max_images: Optional[int]) -> int:
        """Scores one input batch (cut at ``max_images``); returns its images."""
        if max_images is not None and self.seen + x.shape[0] > max_images:
            x = x[: max_images - self.seen]
        self.done_batches += 1  # an empty batch is still consumed: a resume skips it like any other
        if x.shape[0] == 0:
            return 0
        x = x.to(self.run_device, non_blocking=True)
        self._calls.clear()
        with torch.no_grad():
            if isinstance(self.worker, SideStream):
                with self.worker.forward_pass(x):
                    self.model(x)
                self.worker.check()
            else:
                self.model(x)
        for name, k in self._calls.items():
            if k > 1:
                raise ValueError(
                    f"layer {name!r} ran {k} times in one forward pass "
                    "(a shared module); its scores would mix several positions"
                )
        self.seen += int(x.shape[0])
        return int(x.shape[0])

    def checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        if self.worker is not None:
            self.worker.drain()  # the accumulators must hold every batch counted
        runstate.save_checkpoint(self.ckpt_path, self.stats, self.fingerprint, self.done_batches, self.seen)

    def finish(self, use_dist: bool, layers_given: bool) -> Dict[str, Any]:
        """Every batch folded in (and merged across ranks): the layers' results."""
        if self.worker is not None:
            self.worker.drain()
        seen = self.seen
        if use_dist:
            runstate.merge_across_ranks(self.stats)
            seen = max(st.images for st in self.stats.values())
        if seen == 0:
            raise ValueError("data yielded no images")
        results = {}
        for name, st in self.stats.items():
            if st.images == 0:
                if layers_given:
                    raise ValueError(f"layer {name!r} never ran in the forward pass")
                warnings.warn(f"conv {name!r} never ran in the forward pass; it is left out of the scores")
                continue
            results[name] = st.result()
        return results

    def remove_checkpoint(self) -> None:
        """Finished: a later call starts afresh.  The scores are computed, so a
        checkpoint that cannot be removed costs a warning, never the result."""
        if self.ckpt_path is None:
            return
        try:
            os.remove(self.ckpt_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            warnings.warn(
                f"scoring finished, but its checkpoint {self.ckpt_path} could not be removed ({exc}); "
                "delete it before scoring other data with the same checkpoint path"
            )


def score(
    model: nn.Module,
    data: Iterable[Any],
    *,
    n_components: Union[None, int, float] = None,
    layers: Optional[Sequence[str]] = None,
    max_images: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    overlap: Optional[bool] = None,
    distributed: Optional[bool] = None,
    checkpoint: Union[None, str, "os.PathLike[str]"] = None,
    checkpoint_every: int = 100,
    tap: str = "conv_output",
    statistic: str = "energy",
) -> Scores:
    """OCNNA scores of every prunable conv of ``model`` over ``data``.

    Args:
        model: the trained CNN (left unchanged); not an ``nn.DataParallel``
            (pass its ``.module``, or one process per GPU: ``distributed``).
        data: an iterable of input batches or of ``(input, target, ...)``
            tuples; a ``DataLoader`` works.
        n_components: PCA components kept per map: ``None`` (all; default),
            an int, or a float explained-variance ratio in (0, 1).
        layers: names of the convs to score (default: all with ``groups == 1``).
        max_images: stop after this many images (the last batch is cut).
        device: where to run (default: the model's); the model moves back after.
        progress: show a progress bar.
        overlap: score beside the forward pass (default: on): CPU maps on a
            background thread, CUDA maps on a side stream.  Layers whose
            output is modified in place are always scored in place.
        distributed: under a ``torch.distributed`` process group (``torchrun``)
            each rank passes its share of the data and every rank returns the
            exact merge of all (default: on whenever a group exists).
        checkpoint: a file the accumulators and the position in ``data`` are
            saved to every ``checkpoint_every`` batches (atomically); an
            existing one is resumed from (``data`` must yield the same batches
            in order), and removed after success.  Per rank: ``<file>.rank<N>``.
        tap: the map scored: ``"conv_output"`` (docs/scoring.md §1, default)
            or ``"post_activation"``, ``relu(bn(conv(x)))`` where a conv feeds
            a ReLU alone (traced with ``torch.fx``; a warning names the convs
            that keep their own output, e.g. a residual branch's last).
        statistic: ``"energy"`` (OCNNA, default) or ``"rank"``: HRank's mean
            rank of each map, in the same pass (CPU; ``n_components=None``).

    Returns ``Scores``: each conv's name -> its ``LayerScores``.
    """
    ncomp = _native.canonical_n_components(n_components)
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    use_dist = _use_distributed(distributed)
    max_images = positive_int(max_images, "max_images") if max_images is not None else None
    run, run_device = _start(model, layers, tap, device, ncomp, statistic, _checkpoint_path(checkpoint, use_dist))
    use_overlap = (overlap is None or bool(overlap)) and run_device.type in ("cpu", "cuda")
    with run:
        _feed(run, data, max_images, use_overlap, checkpoint_every, progress)
        results = run.finish(use_dist, layers_given=layers is not None)
    check_image_count(results)
    run.remove_checkpoint()
    return Scores(results, n_components=ncomp, tap=tap, statistic=statistic)


def _start(model: nn.Module, layers, tap: str, device, ncomp, statistic: str, ckpt_path: Optional[str]):
    """The run's accumulators on the device it runs on, and its checkpoint's
    fingerprint: the model, layers and settings a checkpoint must come from."""
    convs, taps = _layers(model, layers, tap)
    home, run_device = _placement(model, device)
    stats = {
        n: FilterStats(m.out_channels, ncomp, name=n, device=run_device, statistic=statistic) for n, m in convs.items()
    }
    fingerprint = _fingerprint(model, stats, ncomp, tap, statistic) if ckpt_path else {}
    return _ScoringRun(model, stats, taps, home, run_device, ckpt_path, fingerprint), run_device


def _fingerprint(model: nn.Module, stats: Dict[str, FilterStats], ncomp: Any, tap: str, statistic: str):
    return {**runstate.model_fingerprint(model, stats, ncomp), "tap": tap, "statistic": statistic}


def _layers(model: nn.Module, layers: Optional[Sequence[str]], tap: str):
    """The convs to score and, per conv, the map its hook reads."""
    if isinstance(model, nn.DataParallel):
        # its replicas share the hooks and would feed each layer's accumulator
        # from several GPUs at once
        raise ValueError(
            "score() does not take nn.DataParallel models: pass model.module (one device), "
            "or run one process per GPU under torch.distributed (see distributed=)"
        )
    convs = prunable_convs(model, layers)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no prunable conv (nn.Conv2d with groups == 1) to score")
    return convs, scored_maps(model, convs, tap)


def _use_distributed(distributed: Optional[bool]) -> bool:
    """Under a process group unless told not to (one process of a group of one
    too: its checkpoint is named for its rank); ``True`` without one is refused."""
    share_of(distributed)
    import torch.distributed as dist

    return distributed is not False and dist.is_available() and dist.is_initialized()


def _checkpoint_path(checkpoint: Any, use_dist: bool) -> Optional[str]:
    """The checkpoint file of this process (under torch.distributed, one per rank)."""
    if checkpoint is None:
        return None
    path = os.fspath(checkpoint)
    if use_dist:
        import torch.distributed as dist

        path = f"{path}.rank{dist.get_rank()}"
    return path


def _feed(run: "_ScoringRun", data: Iterable[Any], max_images, use_overlap: bool, every: int, progress: bool) -> None:
    """The batches of ``data`` past a resumed checkpoint through the run,
    checkpointing every ``every`` batches, up to ``max_images``."""
    batches = run.resume(iter(data))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=_total_images(data, max_images), unit="img", desc="OCNNA scoring", initial=run.seen)
    try:
        if use_overlap and not (max_images is not None and run.seen >= max_images):
            batches = run.probe(batches)
        for batch in batches:
            n = run.run_batch(_input_of(batch), max_images)
            if n == 0:
                continue
            if bar is not None:
                bar.update(n)
            if run.done_batches % every == 0:
                run.checkpoint()
            if max_images is not None and run.seen >= max_images:
                break
    finally:
        if bar is not None:
            bar.close()
