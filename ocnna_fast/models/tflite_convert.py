"""TFLite (quantized) MobileNet files -> float PyTorch weights.

Reads the flatbuffer with the pure-Python PyPI package ``tflite`` (no
TensorFlow), walks the graph's convolutions in order, dequantises each
weight tensor (``(q - zero_point) * scale``, per tensor or per output
channel) and each int32 bias (``q * scale``), and lays them out for the zoo
model (``models.mobilenet_tf``): OHWI -> OIHW for convs, 1HWC -> C1HW for
depthwise convs.  The graph's own padding, strides and fused activations are
checked against the zoo architecture, so a file that does not match is an
error, never a silently different network.

    ocnna-fast convert-tflite mobilenet_v1_0.75_192_quant.tflite --out mnv1_075.safetensors
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

__all__ = ["TFLiteConv", "read_convs", "convert_tflite", "input_normalisation", "detect_arch"]

PathLike = Union[str, os.PathLike]
_SAME, _RELU6, _NONE = 0, 3, 0


def _tflite():
    try:
        import tflite
    except ImportError as exc:
        raise ImportError('reading TFLite files needs the `tflite` package: pip install "ocnna-fast[tflite]"') from exc
    return tflite


@dataclass
class TFLiteConv:
    """One CONV_2D or DEPTHWISE_CONV_2D of the graph, weights dequantised."""

    kind: str  # "conv" or "depthwise"
    weight: np.ndarray  # float32, OIHW (depthwise: C,1,H,W)
    bias: np.ndarray  # float32
    stride: int
    same_padding: bool
    relu6: bool
    input_shape: List[int]  # NHWC


def _dequantise(tensor, raw: np.ndarray, axis: int) -> np.ndarray:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return raw.astype(np.float32)
    scale = q.ScaleAsNumpy().astype(np.float64)
    zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
    shape = [1] * raw.ndim
    if scale.size > 1:  # per channel, along the quantised dimension
        shape[axis] = scale.size
    return ((raw.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _buffer(model, graph, index: int) -> Tuple[object, np.ndarray]:
    tflite = _tflite()
    t = graph.Tensors(index)
    dtype = {
        tflite.TensorType.UINT8: np.uint8,
        tflite.TensorType.INT8: np.int8,
        tflite.TensorType.INT32: np.int32,
        tflite.TensorType.FLOAT32: np.float32,
    }.get(t.Type())
    if dtype is None:
        raise ValueError(f"tensor {t.Name().decode()}: unsupported type {t.Type()}")
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, int):  # an empty buffer reads as 0
        raise ValueError(f"tensor {t.Name().decode()} holds no constant data")
    return t, np.frombuffer(data.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())


def read_convs(path: PathLike) -> Tuple[List[TFLiteConv], Dict[str, float]]:
    """Every conv of the (single) graph in execution order, and the input
    tensor's quantisation (``scale``, ``zero_point``, ``size``)."""
    tflite = _tflite()
    with open(path, "rb") as f:
        buf = f.read()
    # a TFLite flatbuffer names itself "TFL3" at bytes 4-8; anything else is not one
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        what = "empty" if not buf else "not a TFLite model (no TFL3 identifier)"
        raise ValueError(f"{path} is {what}; convert-tflite reads the Coral MobileNet .tflite files")
    try:
        return _read_convs(tflite, buf, path)
    except ValueError:
        raise
    except Exception as exc:  # the flatbuffer reader fails in many ways on a damaged file
        raise ValueError(
            f"{path} is a damaged or truncated TFLite file ({type(exc).__name__}: {exc}); fetch it again"
        ) from None


def _read_convs(tflite: Any, buf: bytes, path: PathLike) -> Tuple[List[TFLiteConv], Dict[str, float]]:
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError(f"{path} holds no subgraph: there is no network to convert")
    graph = model.Subgraphs(0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    convs = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        ins = op.InputsAsNumpy().tolist()
        options = tflite.Conv2DOptions() if name == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        wt, wq = _buffer(model, graph, ins[1])
        bt, bq = _buffer(model, graph, ins[2])
        if name == "CONV_2D":
            w = _dequantise(wt, wq, 0).transpose(0, 3, 1, 2)  # OHWI -> OIHW
        else:
            w = _dequantise(wt, wq, 3).transpose(3, 0, 1, 2)  # 1HWC -> C1HW
        if options.StrideH() != options.StrideW():
            raise ValueError(f"operator {k}: unequal strides are not supported")
        convs.append(
            TFLiteConv(
                "conv" if name == "CONV_2D" else "depthwise",
                np.ascontiguousarray(w),
                _dequantise(bt, bq, 0),
                options.StrideH(),
                options.Padding() == _SAME,
                options.FusedActivationFunction() == _RELU6,
                graph.Tensors(ins[0]).ShapeAsNumpy().tolist(),
            )
        )
    if not convs:
        raise ValueError(f"{path} holds no convolution: not a MobileNet")
    inp = graph.Tensors(graph.InputsAsNumpy()[0])
    q = inp.Quantization()
    if q is None or q.ScaleLength() < 1 or q.ZeroPointLength() < 1:
        raise ValueError(
            f"{path}: its input is not quantised (a float TFLite model?); convert-tflite reads the Coral "
            "uint8 MobileNets, whose input quantisation gives the normalisation"
        )
    quant = {
        "scale": float(q.ScaleAsNumpy()[0]),
        "zero_point": float(q.ZeroPointAsNumpy()[0]),
        "size": int(inp.ShapeAsNumpy()[1]),
    }
    return convs, quant


def input_normalisation(quant: Dict[str, float]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` on 0-1 RGB that reproduces the file's uint8 input
    quantisation ``real = (255 x - zero_point) * scale``."""
    mean = quant["zero_point"] / 255.0
    std = 1.0 / (255.0 * quant["scale"])
    return (mean,) * 3, (std,) * 3


def detect_arch(path: PathLike) -> str:
    """The zoo name of the MobileNet a TFLite file holds (by its stem width,
    conv count and input size)."""
    from .mobilenet_tf import TF_MOBILENETS, tf_mobilenet

    convs, quant = read_convs(path)
    for name, (_, _, size, zero_point, scale) in TF_MOBILENETS.items():
        if size != quant["size"] or abs(zero_point - quant["zero_point"]) > 1e-6:
            continue
        if abs(scale - quant["scale"]) > 1e-6 * scale:
            continue
        model = tf_mobilenet(name)
        shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        if shapes[:-1] == [c.weight.shape for c in convs][:-1]:  # the classifier may carry "background"
            return name
    raise ValueError(
        f"{path}: {len(convs)} convolutions, stem width {convs[0].weight.shape[0] if convs else 0}, "
        f"input {quant['size']}px: not a MobileNet this converter knows ({', '.join(TF_MOBILENETS)})"
    )


def convert_tflite(path: PathLike, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Loads the file's weights into ``model`` (a zoo MobileNet of the same
    architecture), checking every conv's shape, stride, padding and
    activation, and the input quantisation against the model's
    normalisation; returns the model's new state dict."""
    from .mobilenet_tf import Conv2dSame

    convs, quant = read_convs(path)
    mean, std = input_normalisation(quant)
    want = (getattr(model, "input_mean", None), getattr(model, "input_std", None))
    if want[0] is not None and (abs(mean[0] - want[0][0]) > 1e-6 or abs(std[0] - want[1][0]) > 1e-6):
        raise ValueError(
            f"{path}: input quantisation means mean {mean[0]:.6f} / std {std[0]:.6f}, the model "
            f"expects {want[0][0]:.6f} / {want[1][0]:.6f}"
        )
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(mods) != len(convs):
        raise ValueError(f"{path} has {len(convs)} convolutions, the model {len(mods)}: another architecture")
    last = convs[-1] if convs else None
    if last is not None and last.weight.shape[0] == mods[-1][1].out_channels + 1:
        # the TF classifier's extra first output is "background": not an ImageNet class
        last.weight, last.bias = last.weight[1:], last.bias[1:]
    relu6 = model.tf_relu6_flags() if hasattr(model, "tf_relu6_flags") else [c.relu6 for c in convs]
    checked: List[str] = []
    with torch.no_grad():
        for (name, mod), c in zip(mods, convs):
            if tuple(mod.weight.shape) != c.weight.shape:
                raise ValueError(
                    f"{name}: the file's weight is {c.weight.shape}, the model's {tuple(mod.weight.shape)}"
                )
            if (c.kind == "depthwise") != (mod.groups > 1 and mod.groups == mod.in_channels):
                raise ValueError(f"{name}: depthwise in one and not the other")
            if mod.stride[0] != c.stride:
                raise ValueError(f"{name}: stride {mod.stride[0]} in the model, {c.stride} in the file")
            if c.weight.shape[-1] > 1 and c.same_padding != isinstance(mod, Conv2dSame):
                raise ValueError(f"{name}: the file pads {'SAME' if c.same_padding else 'VALID'}")
            if c.relu6 != relu6[len(checked)]:
                raise ValueError(f"{name}: activation differs (the file {'has' if c.relu6 else 'has no'} ReLU6)")
            checked.append(name)
            mod.weight.copy_(torch.from_numpy(c.weight))
            if mod.bias is None:
                raise ValueError(f"{name}: the model's conv has no bias; the file's has folded BatchNorm")
            mod.bias.copy_(torch.from_numpy(c.bias))
    return model.state_dict()
