"""A latency budget, measured in the runtime the model is deployed with.

``LatencyRatio(base, ...)`` is what ``budget.prune_to_budget(measure=...)``
calls on each candidate of a ``latency=R`` target: the candidate's latency
over the base model's, in ONNX Runtime (the file exported the way
``ocnna-fast export`` writes it) or PyTorch eager, at one batch size, on
this CPU.  Whole-model measurements rather than a per-layer table: a
table adds layer latencies measured alone, which misses what a runtime
fuses and how it picks kernels for odd widths (the effect that made a
pruned ResNet-56 slower than its base in ONNX Runtime).

The two models are timed in alternating blocks of calls, each block after
its own warm-up calls, and the ratio is of their medians: load that comes
and goes on the machine slows both alike, so the ratio holds where either
time alone would drift.  Each ONNX Runtime block opens its own session
(the runtime's defaults, as deployed) and closes it before the other
model's block: an idle session's threads keep spinning for a while after
a call, and with two sessions open each was timed sharing the cores with
the other's spinning threads (the same ResNet-56 timed against itself at
batch 1 then measured up to twice as fast as itself).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import nn

from ..deploy.latency import eager_call

__all__ = ["RUNTIMES", "LatencyRatio", "check_settings"]

RUNTIMES = ("onnxruntime", "eager")
BLOCKS = 10  # alternations of the two models per measurement: drift is sampled evenly by both


def check_settings(runtime: str, batch: int, *, repeats: int = 1, warmup: int = 0, deploy: bool = True) -> None:
    """Refuses a latency measurement that cannot run: an unknown runtime, a
    batch or repeats below 1, and (``deploy``) ONNX Runtime when the deploy
    extra is missing, so a job fails before its scoring and allocation work,
    not at the first candidate."""
    if runtime not in RUNTIMES:
        raise ValueError(f"a latency runtime is one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need a latency batch >= 1, repeats >= 1, warmup >= 0; got {batch!r}, {repeats}, {warmup}")
    if deploy and runtime == "onnxruntime":
        from ..deploy.export import require_deploy

        require_deploy()


class LatencyRatio:
    """Callable: a pruned model -> its latency over ``base``'s, in
    ``runtime`` at ``batch``, from ``repeats`` timed calls of each in
    ``BLOCKS`` alternating blocks, each block after ``warmup`` untimed
    calls.  ``measurements`` keeps every candidate's figures (milliseconds
    and the ratio), in order.  ``timer`` replaces ``time.perf_counter``
    (tests)."""

    def __init__(
        self,
        base: nn.Module,
        input_size: int,
        *,
        runtime: str = "onnxruntime",
        batch: int = 1,
        repeats: int = 20,
        warmup: int = 1,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        check_settings(runtime, batch, repeats=repeats, warmup=warmup)
        self.runtime, self.batch, self.input_size = runtime, batch, input_size
        self.repeats, self.warmup, self.timer = repeats, warmup, timer
        self.threads = torch.get_num_threads()
        self.measurements: List[Dict[str, float]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="ocnna-latency-")
        self._base = self._runner(base, "base")

    def _runner(self, model: nn.Module, name: str) -> Callable[[], Callable[[], Any]]:
        """A factory of one-call functions of ``model`` on a fixed random
        batch, in the runtime; each ONNX Runtime call of the factory opens a
        session of its own (see ``__call__``)."""
        shape = (self.batch, 3, self.input_size, self.input_size)
        if self.runtime == "eager":
            call = eager_call(model, self.batch, self.input_size)
            return lambda: call
        from ..deploy.export import export_model, load_runner

        path = Path(self._dir.name) / f"{name}.onnx"
        export_model(model, path, "onnx", self.input_size)
        arr = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

        def session() -> Callable[[], Any]:
            run = load_runner(path, "onnx", self.threads)
            return lambda: run(arr)

        return session

    def __call__(self, pruned: nn.Module) -> float:
        candidate = self._runner(pruned, "candidate")
        times: Dict[str, List[float]] = {"base": [], "pruned": []}
        per_block = -(-self.repeats // BLOCKS)
        for block in range(BLOCKS):
            n = min(per_block, self.repeats - block * per_block)
            if n <= 0:
                break
            for key, factory in (("base", self._base), ("pruned", candidate)):
                call = factory()  # one session at a time: no other session's threads spin meanwhile
                for i in range(self.warmup + n):
                    t = self.timer()
                    call()
                    if i >= self.warmup:
                        times[key].append(1000.0 * (self.timer() - t))
                del call
        base_ms, pruned_ms = statistics.median(times["base"]), statistics.median(times["pruned"])
        if base_ms <= 0:
            raise RuntimeError("the base model's measured latency is zero: the timer cannot resolve it")
        ratio = pruned_ms / base_ms
        self.measurements.append({"base_ms": base_ms, "pruned_ms": pruned_ms, "ratio": ratio})
        return ratio

    def describe(self) -> Dict[str, Any]:
        """How it measures, for a report: runtime, batch, threads, repeats, candidates measured so far."""
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "threads": self.threads,
            "repeats": self.repeats,
            "candidates": len(self.measurements),
        }
