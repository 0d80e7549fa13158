"""What the commands write and print besides their own files: the --out
lock, report.json/report.md, and latency lines."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Dict

from ..atomic import write_text_atomic
from ..distributed import is_main
from ..outdir import locked

__all__ = ["writer_lock", "write_report", "print_latency"]


def writer_lock(out: Path):
    """The --out lock, held by the process that writes: under torchrun every
    rank runs the command and rank 0 alone writes."""
    return locked(out) if is_main() else contextlib.nullcontext(out)


def write_report(out: Path, report: Dict[str, Any], title: str) -> None:
    """``report.json`` (every key) and ``report.md`` (the scalar ones, and the latency table)."""
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {k} | {v if not isinstance(v, float) else round(v, 4)} |"
        for k, v in report.items()
        if not isinstance(v, (dict, list))
    )
    md = f"# {title}\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    if isinstance(report.get("latency"), dict):
        from ..export import latency_markdown

        md += "\n" + latency_markdown(report["latency"])
    write_text_atomic(out / "report.md", md)


def print_latency(section: Dict[str, Any]) -> None:
    threads = section["pruned"]["threads"]
    print(f"latency on this CPU ({threads} threads; median ms, base -> pruned, speed-up):")
    for key, ratio in section.get("speedup", {}).items():
        print(
            f"  {key:<18} {section['base'][key]['median']:9.2f} -> {section['pruned'][key]['median']:9.2f}"
            f"   x{ratio:.2f}"
        )
    if "onnxruntime" in section:
        print(f"  ONNX Runtime {section['onnxruntime']}")
