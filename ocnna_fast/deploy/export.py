"""From pruned model to a deployable file: ONNX or TorchScript export, a
verification of the file in its runtime against PyTorch, and latency where
it will run (ONNX Runtime's CPU provider, PyTorch eager).

ONNX needs the optional extra ``pip install "ocnna-fast[deploy]"`` (onnx,
onnxscript for torch's exporter, onnxruntime); TorchScript needs nothing
more.  Verification failing is an error (:class:`ExportMismatch`), never a
warning: a file that does not compute what the model computes must not ship.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._util.atomic import atomic_path, replace_all
from ..surgery.plans import floating_dtype
from .latency import time_calls

__all__ = [
    "FORMATS",
    "ExportMismatch",
    "Verification",
    "export_model",
    "export_verified",
    "load_runner",
    "verify",
    "runtime_latency",
    "require_deploy",
    "compare_latency",
    "weights_bytes",
]

FORMATS = ("onnx", "torchscript")
PathLike = Union[str, os.PathLike]
DEFAULT_OPSET = 18


class ExportMismatch(ValueError):
    """The exported file's outputs differ from the PyTorch model's beyond tolerance."""


def require_deploy() -> None:
    """Raises ``ImportError`` naming the extra when ONNX support is missing."""
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"ONNX export and verification need {', '.join(missing)}: "
            'pip install "ocnna-fast[deploy]" (or pip install onnx onnxscript onnxruntime)'
        )


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_model(
    model: nn.Module,
    path: PathLike,
    fmt: str = "onnx",
    input_size: Optional[int] = None,
    batch: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
) -> Dict[str, Any]:
    """Writes ``model`` (a copy in eval mode, on the CPU; the model itself is
    left as it is) to ``path`` atomically and returns what was written:
    format, batch (``None``: dynamic), ONNX opset, bytes.  ``batch=None``
    exports a dynamic batch dimension."""
    _check_format(fmt)
    _check_side(input_size)
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or None (dynamic), got {batch}")
    model = copy.deepcopy(model).eval().cpu()
    example = torch.randn(batch or 2, 3, input_size, input_size, dtype=floating_dtype(model))  # its own precision
    path = Path(path)
    info: Dict[str, Any] = {"format": fmt, "path": str(path), "batch": batch, "input_size": input_size}
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            _write(model, tmp, fmt, example, batch, opset, info)
    except (ValueError, ImportError, OSError):
        raise
    except Exception as exc:  # the exporters raise many types; a model they cannot trace is the user's to change
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        hint = (
            "try --format torchscript, or a fixed --batch"
            if fmt == "onnx"
            else "try --format onnx, or script the model yourself (torch.jit.script)"
        )
        raise ValueError(
            f"cannot export {type(model).__name__} to {fmt}: tracing it failed ({type(exc).__name__}: {first}). "
            f"A model whose control flow depends on its input values cannot be traced; {hint}"
        ) from exc
    info["bytes"] = path.stat().st_size
    return info


def _write(
    model: nn.Module, tmp: str, fmt: str, example: torch.Tensor, batch: Optional[int], opset: int, info: Dict[str, Any]
) -> None:
    """The exporter's part of ``export_model``: writes ``tmp`` in ``fmt``."""
    if fmt == "onnx":
        require_deploy()
        dyn = None if batch is not None else ({0: torch.export.Dim("batch", min=1)},)
        # torch's exporter reports its progress on stdout; keep a CLI's output readable
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=True,
                dynamic_shapes=dyn,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                external_data=False,
            )
        import onnx

        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        info["opset"] = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(tmp))


def _check_side(input_size: Optional[int]) -> None:
    """No silent default: a 32px CIFAR trace of a 224px model measures the wrong network."""
    if input_size is None:
        raise TypeError("give input_size, the side in pixels the model takes (e.g. 32 for CIFAR, 224 for ImageNet)")


def export_verified(
    models: Dict[str, Tuple[nn.Module, PathLike]],
    fmt: str,
    images: torch.Tensor,
    input_size: int,
    batch: Optional[int] = None,
    companions: Optional[Callable[[Dict[str, Dict[str, Any]]], Dict[Path, str]]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Exports each ``name: (model, path)``, verifies every file in its
    runtime, and only when all pass puts them at their paths, with the text
    files ``companions(report)`` returns (``{path: text}``, e.g. a report):
    all or none.  On any failure (a mismatch, a runtime that cannot load the
    file, a path that cannot be replaced, an interruption) no path changes
    and the temporary files are removed.  Returns per name what
    ``export_model`` returns plus ``verification``."""
    staged: Dict[Path, Path] = {}
    report: Dict[str, Dict[str, Any]] = {}
    try:
        for name, (model, path) in models.items():
            path = Path(path)
            tmp = path.with_name(f".{path.stem}.unverified-{os.getpid()}{path.suffix}")
            staged[path] = tmp
            info = export_model(model, tmp, fmt, input_size, batch)
            try:
                check = verify(model, tmp, fmt, images, batch=batch)
            except ExportMismatch as exc:
                raise ExportMismatch(str(exc).replace(str(tmp), f"the export of {path}")) from None
            except (ImportError, ValueError):
                raise
            except Exception as exc:
                raise ValueError(f"{fmt} runtime cannot run the export of {path}: {type(exc).__name__}: {exc}") from exc
            report[name] = {**info, "path": str(path), "verification": check.as_dict()}
        for path, text in (companions(report) if companions else {}).items():
            path = Path(path)
            staged[path] = path.with_name(f".{path.name}.staged-{os.getpid()}")
            staged[path].write_text(text)
        replace_all(staged)
    finally:
        for tmp in staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return report


def load_runner(path: PathLike, fmt: str, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 ``(N, 3, H, W)`` array -> logits array that runs the
    exported file in its runtime: ONNX Runtime's CPU provider, or TorchScript."""
    _check_format(fmt)
    threads = threads or torch.get_num_threads()
    if fmt == "onnx":
        require_deploy()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        wants = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
        return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=wants)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still what many deploy
        module = torch.jit.load(str(path), map_location="cpu").eval()
    dtype = floating_dtype(module)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dtype)).float().numpy()

    return run


@dataclass
class Verification:
    """How closely the exported file reproduces the PyTorch model on real images."""

    format: str
    images: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float  # fraction of images with the same predicted class
    ok: bool

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def verify(
    model: nn.Module,
    path: PathLike,
    fmt: str,
    images: Union[torch.Tensor, Iterable[torch.Tensor]],
    batch: Optional[int] = None,
    atol: float = 1e-3,
    rtol: float = 1e-4,
) -> Verification:
    """Runs the exported file and ``model`` on the same normalised images and
    compares the logits.  The tolerance is ``atol + rtol * max|logit|``; a
    larger difference raises :class:`ExportMismatch`.  ``batch`` is the
    export's fixed batch size (images are fed in chunks of it, the last one
    padded), or ``None`` for a dynamic batch."""
    run = load_runner(path, fmt)
    chunks = [images] if isinstance(images, torch.Tensor) else list(images)
    x = torch.cat([c.float().cpu() for c in chunks])
    if len(x) == 0:
        raise ValueError("verification needs at least one image")
    model = model.eval().cpu()
    dtype = floating_dtype(model)
    if dtype in (torch.float16, torch.bfloat16):  # half precision rounds at about 1e-3 of each value
        atol, rtol = max(atol, 1e-2), max(rtol, 1e-2)
    step = batch or 64
    got, want = [], []
    with torch.no_grad():
        for i in range(0, len(x), step):
            part = x[i : i + step]
            n = len(part)
            if batch is not None and n < batch:  # a fixed-batch file takes exactly `batch` images
                part = torch.cat([part, part[:1].expand(batch - n, *part.shape[1:])])
            got.append(run(part.numpy())[:n])
            want.append(model(part.to(dtype)).float().numpy()[:n])
    got_a, want_a = np.concatenate(got), np.concatenate(want)
    if got_a.shape != want_a.shape:
        raise ExportMismatch(f"{path}: output shape {got_a.shape} differs from the model's {want_a.shape}")
    diff = float(np.max(np.abs(got_a.astype(np.float64) - want_a))) if np.all(np.isfinite(got_a)) else float("inf")
    tol = atol + rtol * float(np.max(np.abs(want_a)))
    agree = float(np.mean(got_a.argmax(1) == want_a.argmax(1)))
    result = Verification(fmt, len(x), diff, tol, agree, diff <= tol)
    if not result.ok:
        raise ExportMismatch(
            f"{path} ({fmt}) does not reproduce the model: max |logit difference| {diff:.3g} > "
            f"tolerance {tol:.3g} on {len(x)} images (top-1 agreement {agree:.1%})"
        )
    return result


def runtime_latency(
    model: nn.Module,
    onnx_path: Optional[PathLike],
    input_size: Optional[int] = None,
    batches=(1, 64),
    repeats: int = 20,
    warmup: int = 3,
    device: Optional[torch.device] = None,
) -> Dict[str, Any]:
    """Milliseconds per forward pass (median and spread, ``time_calls``) in
    PyTorch eager on ``device`` (default the model's; a copy moves there)
    and, given an ONNX file with a dynamic batch, in ONNX Runtime on the
    CPU, at each batch size; threads and device stated."""
    _check_side(input_size)
    from .._util.placement import model_device
    from .latency import latency_ms

    if device is not None and torch.device(device) != model_device(model):
        model = copy.deepcopy(model).to(device)  # the caller's model stays where it is
    threads = torch.get_num_threads()
    out: Dict[str, Any] = {"threads": threads, "repeats": repeats, "warmup": warmup}
    out["eager_device"] = str(model_device(model))
    run = load_runner(onnx_path, "onnx", threads) if onnx_path is not None else None  # one session for every batch
    for b in batches:
        reps = repeats if b == 1 else max(3, repeats // 4)
        out[f"eager_b{b}"] = latency_ms(model, b, input_size, reps, warmup)
        if run is not None:
            x = np.random.default_rng(0).standard_normal((b, 3, input_size, input_size), dtype=np.float32)
            out[f"onnxruntime_b{b}"] = time_calls(lambda: run(x), reps, warmup)
    return out


def compare_latency(
    base: nn.Module, pruned: nn.Module, size: int, repeats: int, workdir: PathLike, device=None
) -> Dict[str, Any]:
    """Base vs pruned latency in PyTorch eager (on ``device``) and ONNX Runtime
    (with the deploy extra), batch 1 and 64, plus the exported file sizes."""
    try:
        require_deploy()
        onnx_ok = True
    except ImportError as exc:
        onnx_ok, missing = False, str(exc)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    section: Dict[str, Any] = {}
    try:
        for name, model in (("base", base), ("pruned", pruned)):
            path = None
            if onnx_ok:
                path = workdir / f"{name}.onnx"
                export_model(model, path, "onnx", size)
            section[name] = runtime_latency(model, path, size, repeats=repeats, device=device)
            if path is not None:
                section[name]["onnx_bytes"] = path.stat().st_size
            section[name]["weights_bytes"] = weights_bytes(model)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not onnx_ok:
        section["onnxruntime"] = f"not measured: {missing}"
    for key in section["pruned"]:
        if key.startswith(("eager_b", "onnxruntime_b")):
            section.setdefault("speedup", {})[key] = section["base"][key]["median"] / section["pruned"][key]["median"]
    return section


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as float32 safetensors would hold them (parameters and buffers)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
