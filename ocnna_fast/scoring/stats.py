"""``FilterStats``: the streaming per-filter accumulator of one conv layer.

Each ``update`` folds a batch of output maps ``(B, C, H, W)`` into per-channel
float64 ``(count, mean, M2)`` of the per-map PCA energies (Welford / Chan), so
nothing of the activations is kept.  The math is in the native cores; this
class owns validation, placement (CPU or CUDA) and state.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from .. import _native
from .._native import _C
from .._util import validate
from .._util.validate import positive_int
from ..errors import InternalError
from .scores import LayerScores

__all__ = ["FilterStats"]

ArrayLike = Union[torch.Tensor, np.ndarray]

_STATE_VERSION = 2  # 2: the statistic is part of the state
_STATE_KEYS = ("version", "num_channels", "n_components", "statistic", "images", "count", "mean", "m2")


def _as_tensor(activations: ArrayLike) -> torch.Tensor:
    if isinstance(activations, torch.Tensor):
        return activations.detach()
    if isinstance(activations, np.ndarray):
        if activations.dtype.kind != "f":
            raise ValueError(f"activations must be a floating-point array, got dtype {activations.dtype}")
        if not activations.dtype.isnative:
            activations = activations.astype(activations.dtype.newbyteorder("="))
        try:
            return torch.from_numpy(activations)  # shares memory
        except ValueError:  # negative strides: torch cannot view them
            return torch.from_numpy(np.ascontiguousarray(activations))
    raise TypeError(f"activations must be a torch.Tensor or numpy.ndarray, got {type(activations).__name__}")


def _locked(method):
    """Runs ``method`` holding the object's lock (see ``FilterStats.__init__``)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class FilterStats:
    """Streaming OCNNA statistics for ``num_channels`` filters of one layer.

    Args:
        num_channels: number of filters (output channels) of the layer.
        n_components: PCA components kept per map: ``None`` (all, the default),
            an int ``q >= 1``, or a float ratio in (0, 1) (docs/scoring.md §2, step 3).
        name: layer name used in error messages.
        statistic: what is streamed per map: ``"energy"`` (OCNNA's PCA
            energy, docs/scoring.md §2) or ``"rank"``: HRank's numerical rank of the map
            (singular values above ``max(H, W) * eps_float32`` times the
            largest, as ``torch.linalg.matrix_rank`` of a float32 map; CPU
            batches only).  ``result().mean`` is then the average rank.

    Batches may live on the CPU or on a CUDA device (float32, float64, float16
    or bfloat16, any strides); the accumulators follow the batches.
    """

    def __init__(
        self,
        num_channels: int,
        n_components: Any = None,
        *,
        name: Optional[str] = None,
        statistic: str = "energy",
        device: Union[None, str, torch.device] = None,
    ) -> None:
        self.num_channels = positive_int(num_channels, "num_channels")
        if statistic not in _native.STATISTICS:
            raise ValueError(f"statistic must be one of {_native.STATISTICS}, got {statistic!r}")
        if statistic == "rank" and n_components is not None:
            raise ValueError("statistic='rank' takes no n_components (the rank uses every singular value)")
        self.statistic = statistic
        self._params = (
            _native.parse_n_components(n_components) if statistic == "energy" else (_native.MODE_RANK, 0, 0.0)
        )
        self.n_components = _native.canonical_n_components(n_components)
        self.name = name
        self._images = 0  # images folded in, tracked on the host (no device sync)
        # Starting on the batches' device spares a blocking copy at the first update.
        dev = _native.concrete_device("cpu" if device is None else device)
        self._count = torch.zeros(self.num_channels, dtype=torch.float64, device=dev)
        self._mean = torch.zeros(self.num_channels, dtype=torch.float64, device=dev)
        self._m2 = torch.zeros(self.num_channels, dtype=torch.float64, device=dev)
        # CUDA only: status words of the CUDA core, see _prepare_cuda
        self._status: Optional[torch.Tensor] = None
        # The native fold releases the GIL while it writes the accumulators, so
        # two threads updating one object at once would lose counts: every
        # method that reads or writes the state holds this lock.
        self._lock = threading.RLock()

    # ----------------------------------------------------------- helpers --
    def _where(self) -> str:
        return f"layer {self.name!r}" if self.name else "FilterStats"

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def images(self) -> int:
        """Images folded in so far (the per-layer ``count`` of the result)."""
        return self._images

    def _move_to(self, device: torch.device) -> None:
        if self._mean.device != device:
            self._check_status()
            self._count = self._count.to(device)
            self._mean = self._mean.to(device)
            self._m2 = self._m2.to(device)
            self._status = None

    def _check_status(self) -> None:
        if self._status is not None:
            bad = int(self._status[0].item())  # the one host sync of the CUDA path
            if bad >= 0:
                self._status[0] = -1
                # the rejected batches were counted on the host, not merged
                self._images = int(self._count[0].item())
                raise self._rejection(bad, None, "the offending batches were not accumulated")

    def _rejection(self, code: int, x: Optional[torch.Tensor], outcome: str) -> Exception:
        """The error for a batch the native core refused with status ``code``:
        a channel index for bad input, ``INTERNAL_FLAG + channel`` where our own
        eigen-solve failed on finite input.  ``x`` (the batch, CPU only) lets
        the message say whether the values were non-finite or finite but so
        large that their squares overflow float64."""
        flag = int(_C.INTERNAL_FLAG)
        if code >= flag:
            c = code - flag
            shape = f" of maps {tuple(x.shape[2:])} ({x.dtype})" if x is not None else ""
            return InternalError(
                f"{self._where()}: internal error: the eigen-solve of channel {c}{shape} failed on finite "
                f"input (n_components={self.n_components!r}); {outcome}. This is a bug of ocnna-fast: "
                "please report it with the batch"
            )
        if x is not None and bool(torch.isfinite(x[:, code]).all()):
            peak = float(x[:, code].abs().max())
            return ValueError(
                f"{self._where()}: activations of channel {code} are finite but too large (max |x| = {peak:.3g}): "
                f"their squares overflow float64; scale the activations down; {outcome}"
            )
        if x is None:  # CUDA: the batch is gone by now, so both causes are named
            return ValueError(
                f"{self._where()}: non-finite (NaN or Inf) activations in channel {code}, or finite "
                f"values so large (|x| above ~1e154) that their squares overflow float64; {outcome}"
            )
        return ValueError(f"{self._where()}: non-finite (NaN or Inf) activations in channel {code}; {outcome}")

    def _validate(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"{self._where()}: activations must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"{self._where()}: expected {self.num_channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"{self._where()}: empty maps of shape {tuple(x.shape[2:])}")
        if x.dtype not in _native.DTYPE_CODES:
            raise ValueError(
                f"{self._where()}: activations must be float32, float64, float16 or bfloat16, got {x.dtype}"
            )

    # --------------------------------------------------------------- API --
    @_locked
    def update(self, activations: ArrayLike) -> "FilterStats":
        """Folds a batch ``(B, C, H, W)`` in.  A batch holding NaN or Inf is
        rejected whole with a ``ValueError`` (on CUDA: at ``result()``)."""
        x = _as_tensor(activations)
        self._validate(x)
        if x.shape[0] == 0:
            return self
        if x.is_cuda and self.statistic == "rank":
            raise ValueError(f"{self._where()}: the rank statistic runs on the CPU: pass CPU activations")
        if x.is_cuda:
            # The kernels read x on the current stream, the stream it was made on,
            # so the caching allocator cannot hand its memory out before they run:
            # no record_stream needed.
            self._prepare_cuda(x.device)
            self._accumulate_cuda(x, _native.current_stream(x.device))
            return self
        if x.device.type == "cpu":
            mode, q, tau = self._params
            self._move_to(x.device)
            ptr, code, shape, strides = _native.batch_args(x)
            bad = _C.accumulate(
                ptr, code, shape, strides, mode, q, tau, self._count.numpy(), self._mean.numpy(), self._m2.numpy()
            )
            if bad >= 0:
                raise self._rejection(bad, x, "this batch was not accumulated")
        else:
            raise ValueError(f"{self._where()}: activations on unsupported device {x.device}")
        self._images += int(x.shape[0])
        return self

    @_locked
    def update_on_stream(self, activations: torch.Tensor, stream: "torch.cuda.Stream") -> "FilterStats":
        """Folds a CUDA batch in on ``stream`` rather than the current stream,
        so scoring can run beside the forward pass.  ``stream`` first waits for
        the current stream (which made the batch).  The caller keeps the batch
        alive for ``stream`` (``activations.record_stream(stream)``), must not
        edit it in place until ``stream`` has run, and makes the current stream
        wait for ``stream`` before reading ``result()``."""
        x = _as_tensor(activations)
        self._validate(x)
        if not x.is_cuda:
            raise ValueError(f"{self._where()}: update_on_stream takes CUDA activations; use update()")
        if self.statistic == "rank":
            raise ValueError(f"{self._where()}: the rank statistic runs on the CPU: pass CPU activations")
        if x.shape[0] == 0:
            return self
        self._prepare_cuda(x.device)  # its fills run on the current stream, before the wait below
        stream.wait_stream(torch.cuda.current_stream(x.device))
        self._accumulate_cuda(x, stream.cuda_stream)
        return self

    def _prepare_cuda(self, device: torch.device) -> None:
        """Accumulators and status flag on ``device``.  Their copies and fills
        run on the current stream, so a caller scoring on another stream
        calls this before making that stream wait for the current one."""
        if self._mean.device != device:
            self._move_to(device)
        if self._status is None:
            # [first channel of a rejected batch or -1, then two words of kernel
            # scratch that every batch leaves at -1 and 0] (csrc/cuda/scorer_cuda.h)
            self._status = torch.full((3,), -1, dtype=torch.int64, device=device)
            self._status[2] = 0

    def _accumulate_cuda(self, x: torch.Tensor, stream: int) -> None:
        """Launches the fold of a validated CUDA batch on ``stream`` (a raw
        ``cudaStream_t`` of x's device) and counts its images.  Nothing here
        waits for the GPU; the caller has run ``_prepare_cuda`` and keeps x
        alive for ``stream``."""
        core = _native.cuda_core()
        mode, q, tau = self._params
        ptr, code, shape, strides = _native.batch_args(x)
        core.accumulate(
            ptr,
            code,
            shape,
            strides,
            mode,
            q,
            tau,
            self._count.data_ptr(),
            self._mean.data_ptr(),
            self._m2.data_ptr(),
            self._status.data_ptr(),
            stream,
            x.device.index,
        )
        self._images += int(x.shape[0])

    def _host_state(self):
        self._check_status()
        return self._count.cpu(), self._mean.cpu(), self._m2.cpu()

    def merge(self, other: "FilterStats") -> "FilterStats":
        """Folds another accumulator of the same layer in (exact Chan merge)."""
        if not isinstance(other, FilterStats):
            raise TypeError(f"can only merge a FilterStats, got {type(other).__name__}")
        if (
            other.num_channels != self.num_channels
            or other._params != self._params
            or other.statistic != self.statistic
        ):
            raise ValueError(
                f"{self._where()}: cannot merge stats of {other.num_channels} channels / n_components="
                f"{other.n_components!r} into {self.num_channels} channels / n_components={self.n_components!r}"
            )
        with other._lock:  # taken apart from ours: two threads merging a->b and b->a cannot deadlock
            ocnt, omean, om2 = (t.clone() for t in other._host_state())
            other_images = other._images
        with self._lock:
            return self._merge_totals(ocnt, omean, om2, other_images)

    def _merge_totals(self, ocnt, omean, om2, other_images: int) -> "FilterStats":
        device = self.device
        cnt, mean, m2 = (t.clone() for t in self._host_state())
        _C.merge(cnt.numpy(), mean.numpy(), m2.numpy(), ocnt.numpy(), omean.numpy(), om2.numpy())
        self._count, self._mean, self._m2 = cnt.to(device), mean.to(device), m2.to(device)
        self._images += other_images
        return self

    @_locked
    def result(self) -> LayerScores:
        """The scores so far (float64 tensors on the CPU)."""
        cnt, mean, m2 = self._host_state()
        if self._images == 0:
            raise ValueError(f"{self._where()}: no images were accumulated")
        std = torch.sqrt(torch.clamp(m2 / cnt, min=0.0))
        dead = mean == 0
        score = torch.where(dead, torch.zeros_like(mean), std / torch.where(dead, torch.ones_like(mean), mean))
        return LayerScores(score=score, mean=mean.clone(), std=std, count=self._images, dead=dead)

    @_locked
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: plain tensors and Python scalars."""
        cnt, mean, m2 = self._host_state()
        return {
            "version": _STATE_VERSION,
            "num_channels": self.num_channels,
            "n_components": self.n_components,
            "statistic": self.statistic,
            "images": self._images,
            "count": cnt.clone(),
            "mean": mean.clone(),
            "m2": m2.clone(),
        }

    def state_with(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, images: int) -> Dict[str, Any]:
        """A state for this accumulator's layer holding the given totals."""
        return {
            "version": _STATE_VERSION,
            "num_channels": self.num_channels,
            "n_components": self.n_components,
            "statistic": self.statistic,
            "images": int(images),
            "count": count,
            "mean": mean,
            "m2": m2,
        }

    @_locked
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores ``state_dict()`` output.  Everything is checked before
        anything changes (known keys, version, channels, ``n_components``,
        finite non-negative statistics, counts that agree with the images);
        a bad state is a ``ValueError`` and leaves this object as it was."""
        where = self._where()
        if not isinstance(state, Mapping):
            raise ValueError(f"{where}: a FilterStats state is a dict, got {type(state).__name__}")
        validate.exact_keys(state.keys(), _STATE_KEYS, f"{where}: state")
        if type(state["version"]) is not int or state["version"] != _STATE_VERSION:
            raise ValueError(f"{where}: unsupported state version {state['version']!r}")
        channels = validate.as_count(state["num_channels"], f"{where}: num_channels", minimum=1)
        if channels != self.num_channels:
            raise ValueError(f"{where}: state has {channels} channels, expected {self.num_channels}")
        if not isinstance(state["statistic"], str) or state["statistic"] != self.statistic:
            raise ValueError(f"{where}: state holds the {state['statistic']!r} statistic, this is {self.statistic!r}")
        ncomp = state["n_components"]
        if self.statistic == "rank" and ncomp is not None:
            raise ValueError(f"{where}: a rank state has no n_components, got {ncomp!r}")
        if self.statistic == "energy" and _native.parse_n_components(ncomp) != self._params:
            # parse_n_components also refuses malformed values
            raise ValueError(f"{where}: state was computed with n_components={ncomp!r}, this is {self.n_components!r}")
        count, mean, m2, images = validate.accumulators(
            state["count"], state["mean"], state["m2"], state["images"], self.num_channels, where
        )
        device = self.device
        self._count, self._mean, self._m2 = count.to(device), mean.to(device), m2.to(device)
        self._images = images
        self._status = None

    def __repr__(self) -> str:
        return (
            f"FilterStats(num_channels={self.num_channels}, n_components={self.n_components!r}, "
            f"statistic={self.statistic!r}, "
            f"images={self._images}, device={self.device})"
        )
