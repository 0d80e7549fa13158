"""How base and pruned latency read: the table a report shows, which
figures the machine's load made untrustworthy, and a plain sentence where
the pruned model is not faster."""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["SPREAD_LIMIT", "spread", "not_faster", "latency_markdown"]


# a figure whose interquartile range exceeds this share of its median is flagged as not to be trusted
SPREAD_LIMIT = 0.25


def spread(figure: Dict[str, float]) -> float:
    """Interquartile range over the median of one latency figure."""
    return (figure["q75"] - figure["q25"]) / figure["median"] if figure["median"] > 0 else float("inf")


def not_faster(section: Dict[str, Any]) -> Optional[str]:
    """A plain sentence naming where the pruned model ran no faster than the
    base (speed-up under 1.0; figures the machine's load made untrustworthy
    left out), or ``None``.  Fewer MACs is not lower latency: odd widths fit a
    runtime's kernels worse (``--round-to 8`` keeps multiples of 8)."""
    slow = []
    for key, ratio in section.get("speedup", {}).items():
        b, p = section["base"][key], section["pruned"][key]
        if ratio < 1.0 and max(spread(b), spread(p)) <= SPREAD_LIMIT:
            slow.append(f"{key.replace('_b', ' at batch ')} (x{ratio:.2f})")
    if not slow:
        return None
    return (
        f"The pruned model is not faster than the base here: {', '.join(slow)}. Fewer MACs is not lower latency "
        "on every runtime; widths in multiples of 8 (--round-to 8) or a latency target (--target latency=R) help."
    )


def latency_markdown(section: Dict[str, Any]) -> str:
    threads = section["pruned"]["threads"]
    lines = [
        f"## Latency on this CPU ({threads} threads; median of the timed repeats after warm-up)",
        "",
        "| runtime, batch | repeats | base ms (q25-q75) | pruned ms (q25-q75) | speed-up | trust |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    flagged = False
    for key, ratio in section.get("speedup", {}).items():
        b, p = section["base"][key], section["pruned"][key]
        wide = max(spread(b), spread(p)) > SPREAD_LIMIT
        flagged |= wide
        lines.append(
            f"| {key.replace('_b', ', batch ')} | {p.get('repeats', '?')} | {b['median']:.2f} "
            f"({b['q25']:.2f}-{b['q75']:.2f}) | {p['median']:.2f} ({p['q25']:.2f}-{p['q75']:.2f}) | "
            f"{ratio:.2f}x | {'**spread too wide**' if wide else 'ok'} |"
        )
    if flagged:
        lines.append(
            f"\nFigures marked *spread too wide* had an interquartile range over {SPREAD_LIMIT:.0%} of their "
            "median: the machine was busy. Rerun on a quiet machine (or with more --latency-repeats) before "
            "reading them."
        )
    slow = not_faster(section)
    if slow:
        lines.append(f"\n**{slow}**")
    for name in ("base", "pruned"):
        if "onnx_bytes" in section[name]:
            lines.append(f"\n{name} ONNX file: {section[name]['onnx_bytes']} bytes")
    if "onnxruntime" in section:
        lines.append(f"\nONNX Runtime {section['onnxruntime']}")
    return "\n".join(lines) + "\n"
