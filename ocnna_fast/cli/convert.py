"""``ocnna-fast convert-tflite``: a Coral TFLite MobileNet into float PyTorch weights."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    cv = sub.add_parser(
        "convert-tflite",
        help="convert a (quantized) TFLite MobileNet into float PyTorch weights",
        description="Converts a Coral TFLite MobileNet (v1, v2; quantized) into float PyTorch weights for the zoo.",
        epilog="example: ocnna-fast convert-tflite mobilenet_v1_0.75_192_quant.tflite --out mnv1_075.safetensors",
    )
    cv.add_argument("file", help="a .tflite file (the Coral MobileNet v1 and v2 files)")
    cv.add_argument("--out", required=True, help="the .safetensors file to write")
    cv.add_argument("--arch", default=None, help="zoo architecture (default: detected from the file)")
    cv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._util.atomic import save_tensors
    from ..data.fetch import sha256_of
    from ..models import build
    from ..models.tflite_convert import convert_tflite, detect_arch

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(
            f"--out {out}: convert-tflite writes safetensors, and --weights reads a file by its "
            "suffix: name it NAME.safetensors"
        )
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if not Path(args.file).is_file():
        raise ValueError(f"{args.file} is not a file")
    arch = args.arch or detect_arch(args.file)
    model = build(arch, num_classes=1000)
    state = convert_tflite(args.file, model)
    save_tensors(
        state, out, metadata={"arch": arch, "source": Path(args.file).name, "source_sha256": sha256_of(args.file)}
    )
    print(
        f"{args.file} -> {out} ({arch}, {sum(v.numel() for v in state.values())} values); use it with "
        f"--arch {arch} --weights {out}"
    )
    return 0
