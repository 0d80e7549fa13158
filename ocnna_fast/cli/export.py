"""``ocnna-fast export``: a pruned folder to ONNX or TorchScript, verified in
its runtime against PyTorch before anything at --out is replaced."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import loading, options
from .outdir import OUTPUTS, check_not_pruned_model, producer
from .output import print_latency


def register(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="export a pruned model to ONNX or TorchScript, verify it, measure latency",
        description="Exports a pruned model folder to ONNX or TorchScript, checks the file in its runtime against PyTorch, and with --benchmark measures base vs pruned latency.",
        epilog="example: ocnna-fast export --pruned runs/r56/pruned --format onnx --out runs/r56/r56.onnx --base --benchmark",
    )
    ex.add_argument("--pruned", required=True, help="a pruned/ folder written by 'prune'")
    ex.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "torchscript"],
        help="onnx (default; needs the deploy extra) or torchscript",
    )
    ex.add_argument("--out", required=True, help="the file to write (with --base, the original goes to NAME.base.EXT)")
    ex.add_argument("--base", action="store_true", help="also export the unpruned model it came from")
    ex.add_argument("--batch", type=options.COUNT, default=None, help="a fixed batch size (default: dynamic batch)")
    ex.add_argument(
        "--verify-images",
        type=options.COUNT,
        default=256,
        help="test images of the data set the model was pruned on, run in the exported file and in "
        "PyTorch and compared (default 256)",
    )
    ex.add_argument(
        "--benchmark",
        action="store_true",
        help="measure base vs pruned latency in ONNX Runtime and PyTorch eager, batch 1 and 64",
    )
    ex.add_argument("--latency-repeats", type=options.COUNT, default=20, help="timed passes per latency figure")
    ex.add_argument("--weights", help="the base model's weights (default: the shipped ones for the plan's arch)")
    options.add_data_options(ex, default=None)
    options.add_run_options(
        ex,
        batch=None,
        progress=False,
        runs="the PyTorch eager latency of --benchmark (ONNX Runtime and the check run on the CPU)",
    )
    ex.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="the user model the folder was pruned from (required for such a folder: a file never "
        "chooses the code that runs)",
    )
    options.add_threads_option(ex)
    ex.set_defaults(func=run)


def _base_file(out: Path) -> Path:
    return out.with_name(f"{out.stem}.base{out.suffix}")


# the endings each --format's file takes (a runtime and a reader choose by them)
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".torchscript")}


def check_out(out: Path, fmt: str) -> None:
    """What export may write: a file named for its format, outside any pruned
    model folder, under no other command's output name, and over nothing but
    files an earlier export wrote (its companion report says so)."""
    if out.suffix not in SUFFIXES[fmt]:
        raise ValueError(f"--out {out}: a {fmt} file is named {' or '.join('NAME' + s for s in SUFFIXES[fmt])}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the file to write (e.g. {out / 'model.onnx'})")
    check_not_pruned_model(out.parent, "--out")
    owner = producer(out.parent)
    report = out.with_name(f"{out.name}.json")
    for path in (out, _base_file(out), report):
        if owner is not None and path.name in OUTPUTS.get(owner, ()):
            raise ValueError(f"--out {out} would replace {path}, written by `ocnna-fast {owner}`: choose another --out")
    previous = _previous_export(report)
    for path in (out, _base_file(out), report):
        if (path.exists() or path.is_symlink()) and str(path.resolve()) not in previous:
            raise ValueError(
                f"--out {out} would replace {path}, which `ocnna-fast export` did not write (no export report "
                f"{report.name} names it): remove it or choose another --out"
            )


def _previous_export(report: Path) -> set:
    """The files an earlier export at the same --out wrote, as its report lists them."""
    try:
        doc = json.loads(report.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(doc, dict) or doc.get("command") != "export":
        return set()
    files = [doc.get(name, {}).get("path") for name in ("pruned", "base") if isinstance(doc.get(name), dict)]
    return {str(Path(f).resolve()) for f in files if isinstance(f, str)} | {str(report.resolve())}


def run(args: argparse.Namespace) -> int:
    from ..deploy import export as ex
    from ..models import input_size

    if args.format == "onnx" or args.benchmark:
        ex.require_deploy()
    out = Path(args.out)
    check_out(out, args.format)
    pruned, spec = loading.load_pruned_folder(args)
    arch = spec.get("arch", "?")
    args.arch = arch
    if args.dataset is None:
        args.dataset = spec.get("dataset", "cifar10-jpeg")
    args.input_size = spec.get("input_size")
    size = args.input_size or (input_size(arch) if arch != "?" else 32)
    models = {"pruned": (pruned, out)}
    if args.base or args.benchmark:
        base, _ = loading.load_model(arch, args.weights, args.data_dir, args.dataset, size)
        models["base"] = (base, _base_file(out))
    x = loading.images(args, "test", args.verify_images, False, args.seed).batches(256)
    images = torch.cat([b for b, _ in x])
    report = {
        "command": "export",
        "pruned_folder": args.pruned,
        "arch": arch,
        "dataset": loading.describe(args.dataset),
        "format": args.format,
        "torch": torch.__version__,
    }
    if args.benchmark:
        report["latency"] = ex.compare_latency(
            models["base"][0], pruned, size, args.latency_repeats, out.parent / f".{out.stem}-latency", args.device
        )
    report_path = out.with_name(f"{out.name}.json")

    def companions(files):
        return {report_path: json.dumps({**report, **files}, indent=2)}

    # every file is verified, then all of them (and the report) replace what is at --out, or none does
    report.update(ex.export_verified(models, args.format, images, size, args.batch, companions))
    for name, (_, path) in models.items():
        info = report[name]
        check = ex.Verification(**info["verification"])
        print(
            f"{name}: wrote {path} ({info['bytes'] / 1e6:.2f} MB, {args.format}"
            f"{', opset ' + str(info['opset']) if 'opset' in info else ''}, batch "
            f"{args.batch or 'dynamic'}); on {check.images} {args.dataset} test images: max |logit diff| "
            f"{check.max_abs_diff:.2e} (tolerance {check.tolerance:.1e}), top-1 agreement {check.top1_agreement:.2%}"
        )
    if args.benchmark:
        print_latency(report["latency"])
    print(f"wrote {report_path}")
    return 0
