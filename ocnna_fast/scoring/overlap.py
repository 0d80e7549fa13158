"""Scoring beside the forward pass: a background thread that folds CPU
activations into their ``FilterStats``, and a CUDA side stream that runs
the scoring kernels next to the convolutions.  Each bounds how far it may
trail the forward pass, so activations never pile up."""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import weakref
from typing import Any, Optional

import torch

from .stats import FilterStats

__all__ = ["Overlap", "SideStream"]


class Overlap:
    """Runs ``FilterStats.update`` for CPU batches on one background thread.

    The queue is bounded, so at most ``max_pending`` activation tensors are
    held beyond their normal lifetime.  The first error is kept and raised by
    the next ``submit`` or by ``drain``."""

    def __init__(self, max_pending: int = 8) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max_pending)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name="ocnna-fast-score", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                st, t, version = item
                if self._error is None:
                    if t._version != version:
                        raise RuntimeError(
                            f"the output of layer {st.name!r} was modified in place before it was scored; "
                            "call score(..., overlap=False)"
                        )
                    st.update(t)
                    if t._version != version:
                        raise RuntimeError(
                            f"the output of layer {st.name!r} was modified in place while it was scored; "
                            "call score(..., overlap=False)"
                        )
            except BaseException as exc:  # kept for the main thread
                if self._error is None:
                    self._error = exc
            finally:
                self._q.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, st: FilterStats, t: torch.Tensor) -> None:
        self._raise()
        self._q.put((st, t.detach(), t._version))  # detach() shares the version counter

    def drain(self) -> None:
        self._q.join()
        self._raise()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()


class SideStream:
    """Scores CUDA activations on a side stream of ``device``.

    Each output waits for the current stream (the conv has written it), and is
    marked as used by the side stream so the caching allocator does not hand
    its memory out before the kernels have read it.  ``check`` runs after every
    forward pass: a scored output whose version moved was edited in place
    while the side stream may still have been reading it.  (Waiting instead
    for the next conv to start, so the reads run beside a compute-bound
    convolution, measured no faster on an H100: see benchmarks/bench_gpu.py.)

    Scoring may trail the forward passes by ``max_pending`` batches.  Before
    the next one the host waits for the oldest: the GPU still has the later
    batches queued, so it does not idle, but the activations held for the side
    stream stay bounded when scoring is slower than the forward pass (the
    truncated modes).  Without this the caching allocator would keep them all
    until the GPU's memory runs out."""

    max_pending = 2

    def __init__(self, device: torch.device, forward_priority: Optional[int] = None) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._watch: list = []
        self._pending: "collections.deque[torch.cuda.Event]" = collections.deque()
        self.forward_stream = None if forward_priority is None else torch.cuda.Stream(device, priority=forward_priority)

    @contextlib.contextmanager
    def forward_pass(self, x: torch.Tensor):
        """Runs one forward pass of input ``x``: on the current stream, or on the
        forward stream (after the current one, which made ``x``)."""
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().synchronize()
        if self.forward_stream is None:
            yield
        else:
            self.forward_stream.wait_stream(torch.cuda.current_stream(self.device))
            if x.is_cuda:
                x.record_stream(self.forward_stream)
            with torch.cuda.stream(self.forward_stream):
                yield
        done = torch.cuda.Event()
        done.record(self.stream)  # the end of this batch's scoring
        self._pending.append(done)

    def submit(self, st: FilterStats, t: torch.Tensor) -> None:
        if t.device != self.device:  # the hook submits tensors only
            raise ValueError(f"layer {st.name!r}: output on {t.device}, expected {self.device}")
        st.update_on_stream(t.detach(), self.stream)
        if t.shape[0] == 0:
            return
        t.record_stream(self.stream)
        self._watch.append((weakref.ref(t), t._version, st.name))

    def check(self) -> None:
        """After a forward pass: refuse outputs edited in place while being read."""
        watch, self._watch = self._watch, []
        for ref, version, name in watch:
            t = ref()
            if t is not None and t._version != version:
                raise RuntimeError(
                    f"the output of layer {name!r} was modified in place while it was scored; "
                    "call score(..., overlap=False)"
                )

    def drain(self) -> None:
        """Later work on the current stream (reading the accumulators) waits for the side stream."""
        current = torch.cuda.current_stream(self.device)
        if self.forward_stream is not None:
            current.wait_stream(self.forward_stream)
        current.wait_stream(self.stream)
