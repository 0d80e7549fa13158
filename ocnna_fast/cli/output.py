"""What the commands write and print besides their own files: the --out
lock, report.json/report.md, and latency lines."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

from .._util.atomic import write_text_atomic
from .._util.distributed import is_main
from .outdir import locked

__all__ = ["writer_lock", "command_line", "write_report", "print_latency", "prune_markdown"]


def writer_lock(out: Path):
    """The --out lock, held by the process that writes: under torchrun every
    rank runs the command and rank 0 alone writes."""
    return locked(out) if is_main() else contextlib.nullcontext(out)


def command_line(args: argparse.Namespace) -> str:
    """The command as it was run (``args.argv``, set by ``cli.main``), quoted for a shell."""
    return "ocnna-fast " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) or [])


def write_report(out: Path, report: Dict[str, Any], title: str, markdown: Optional[str] = None) -> None:
    """``report.json`` (every key) and ``report.md``: ``markdown``, or a
    table of the scalar keys and the latency table."""
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    if markdown is not None:
        write_text_atomic(out / "report.md", markdown)
        return
    rows = "\n".join(
        f"| {k} | {v if not isinstance(v, float) else round(v, 4)} |"
        for k, v in report.items()
        if not isinstance(v, (dict, list))
    )
    md = f"# {title}\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    if isinstance(report.get("latency"), dict):
        from ..deploy.latency_report import latency_markdown

        md += "\n" + latency_markdown(report["latency"])
    write_text_atomic(out / "report.md", md)


def print_latency(section: Dict[str, Any]) -> None:
    from ..deploy.latency_report import SPREAD_LIMIT, not_faster, spread

    threads = section["pruned"]["threads"]
    print(f"latency on this CPU ({threads} threads; median ms, base -> pruned, speed-up):")
    for key, ratio in section.get("speedup", {}).items():
        b, p = section["base"][key], section["pruned"][key]
        wide = max(spread(b), spread(p)) > SPREAD_LIMIT
        print(
            f"  {key:<18} {b['median']:9.2f} -> {p['median']:9.2f}   x{ratio:.2f}"
            + ("   (spread too wide to trust: the machine is busy)" if wide else "")
        )
    if "onnxruntime" in section:
        print(f"  ONNX Runtime {section['onnxruntime']}")
    slow = not_faster(section)
    if slow:
        print(slow)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _measured_budget(m: Dict[str, Any]) -> str:
    """The latency figures a latency target was met with."""
    return (
        f"Measured while fitting it ({m['runtime']}, batch {m['batch']}, {m['threads']} threads, medians of "
        f"{m['repeats']} calls each, in alternating blocks): base {m['base_ms']:.2f} ms, pruned {m['pruned_ms']:.2f} ms "
        f"({m['candidates']} candidates measured). The latency table below is measured again, separately."
    )


def _search_cost(sensitivity: Optional[Dict[str, Any]]) -> List[str]:
    """What the width search ran, in forward-pass equivalents (docs/budget.md, "What the search costs")."""
    if not sensitivity or sensitivity.get("passes") is None:
        return []
    screened = sensitivity.get("screened") or 0
    images = sensitivity.get("pass_images")
    over = f"over {images} images" if images else "over its calibration images"
    how = (sensitivity.get("search") or {}).get("how")
    resumed = sensitivity.get("resumed") or 0
    earlier = (
        f" It resumed an earlier run's search: {resumed} losses came from its memo (allocation-losses.json), "
        "so the figure is what this run measured, not what the whole search cost."
        if resumed
        else ""
    )
    seconds, passes = sensitivity.get("stage_seconds") or {}, sensitivity.get("stage_passes") or {}
    words = dict(STAGE_WORDS)
    if sensitivity.get("curves", "measured") != "measured":
        words["curves"] = f"loss curves ({sensitivity['curves']}, predicted)"
    spent = ", ".join(  # in the order they ran
        f"{words[k]} {seconds[k]:.1f} s" + (f" ({passes[k]:.1f} passes)" if passes.get(k) else "")
        for k in STAGE_WORDS
        if k in seconds
    )
    return [
        "",
        f"Width search{f' ({how})' if how else ''}: {sensitivity['passes']:.1f} forward-pass equivalents {over} "
        f"({sensitivity['evaluations']} candidates measured, {screened} screened on a share of the images).{earlier}",
        *([f"By stage: {spent}."] if spent else []),
    ]


# the allocation's stages (``budget.search.STAGES``) as report.md names them
STAGE_WORDS = {
    "setup": "set-up (groups, traces, the base's outputs)",
    "curves": "loss curves",
    "caps": "cap search",
    "fit": "widths fitted to the budget",
    "moves": "moves",
}


def prune_markdown(report: Dict[str, Any], title: str) -> str:
    """``report.md`` of a prune job, for a person: accuracy at each stage,
    what was kept, the budget, the latency, and how to run it again."""
    r = report
    stages = [
        ("base model", r["base_accuracy"]),
        ("right after surgery", r["pruned_accuracy_after_surgery"]),
    ]
    if r.get("bn_images"):
        how = {
            "batchnorm": "BatchNorm re-estimated",
            "batchnorm+refit": "BatchNorm re-estimated and layers refitted",
            "folded-mean": "biases compensated",
            "folded-variance": "folded BatchNorm's statistics restored",
            "folded-refit": "folded BatchNorm's statistics restored and layers refitted",
        }.get(r.get("recalibration"), "recovered")
        stages.append((f"{how} on {r['bn_images']} training images", r["pruned_accuracy_before_finetune"]))
    if r.get("finetune_epochs"):
        n = r["finetune_epochs"]
        stages.append((f"after {n} epoch{'s' if n != 1 else ''} of distillation", r["pruned_accuracy"]))
    lines = [
        f"# {title}",
        "",
        f"Data: {r['dataset']}, {r['eval_images']} test images. Weights: {r['base_weights']}.",
        "",
    ]
    lines += ["## Accuracy (top-1)", "", "| stage | accuracy |", "| --- | --- |"]
    lines += [f"| {name} | {acc:.2f}% |" for name, acc in stages]
    lines += ["", f"Accuracy lost: {r['accuracy_drop']:.2f} points.", "", "## Size", ""]
    lines += ["| | base | pruned | kept |", "| --- | --- | --- | --- |"]
    lines.append(f"| parameters | {r['base_params']:,} | {r['pruned_params']:,} | {_pct(r['rpr'])} |")
    lines.append(f"| MACs per image | {r['base_macs']:,} | {r['pruned_macs']:,} | {_pct(r['macs_ratio'])} |")
    if r.get("target"):
        lines += ["", f"Budget {r['target']} ({r['allocation']} allocation): reached {r['reached']:.4f}."]
        if r.get("target_measured"):
            lines.append(_measured_budget(r["target_measured"]))
        lines += _search_cost(r.get("sensitivity"))
    lines += ["", "## How it ran", ""]
    settings = r.get("settings", {})
    for key, value in settings.items():
        if key != "command":
            lines.append(f"- {'ocnna-fast' if key == 'ocnna_fast' else key.replace('_', ' ')}: {value}")
    allocation = f", allocation {r['allocation_seconds']:.1f} s" if "allocation_seconds" in r else ""
    lines.append(f"- scoring {r['scoring_seconds']:.1f} s{allocation}, distillation {r['finetune_seconds']:.1f} s")
    if settings.get("command"):
        lines += ["", "To run it again:", "", "```bash", settings["command"], "```"]
    md = "\n".join(lines) + "\n"
    if isinstance(r.get("latency"), dict):
        from ..deploy.latency_report import latency_markdown

        md += "\n" + latency_markdown(r["latency"])
    return md
