"""The equal-cost suite's tables and plot: per target one row per method
(means over seeds, the range of the accuracies), and accuracy against the
MACs ratio, one curve per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .results_file import fmt, mean

__all__ = ["MEASURED", "summarise", "budget_table", "budget_plot"]

MEASURED = ("k", "reached", "rpr", "macs_ratio", "acc_surgery", "acc_bn", "acc_finetuned", "allocation_seconds")
MEASURED += ("latency_ms_b1", "latency_ms_b64")


def summarise(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One line per (target, method): means over seeds, and the range of the accuracies."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r)
    out = []
    for (t, m), rs in groups.items():
        line: Dict[str, Any] = {"target": t, "method": m, "seeds": len(rs)}
        for f in MEASURED:
            line[f] = mean([r[f] for r in rs])
        for f in ("acc_bn", "acc_finetuned"):
            v = [r[f] for r in rs if r[f] is not None]
            line[f + "_range"] = (min(v), max(v)) if len(v) > 1 else None
        out.append(line)
    return out


def _acc(line: Dict[str, Any], field: str) -> str:
    rng = line[field + "_range"]
    return fmt(line[field]) + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "")


def budget_table(rows: List[Dict[str, Any]], config: Dict[str, Any], base: Dict[str, Any]) -> str:
    """Markdown: the base model, the settings, per target one row per method."""
    lines = [f"# Pruning methods at equal cost on {config.get('arch', '?')}", ""]
    lines += [
        f"Base model: {base['accuracy']:.2f}% top-1 on {config.get('eval_images', '?')} test images, "
        f"{base['params']:,} parameters, {base['macs']:,} MACs per image.",
        "",
        "Settings:",
        "",
    ]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in sorted(config.items())] + [""]
    head = "| target | method | seeds | k or ratio | reached | RPR | acc. after surgery | acc. after BN | "
    head += "acc. after distillation | allocation s | latency b1 ms |"
    lines += [head, "| " + " | ".join(["---"] * 11) + " |"]
    for s in sorted(summarise(rows), key=lambda x: (x["target"], -(x["acc_finetuned"] or x["acc_bn"] or 0))):
        lines.append(
            f"| {s['target']} | {s['method']} | {s['seeds']} | {fmt(s['k'], 2)} | {fmt(s['reached'], 4)} | "
            f"{fmt(s['rpr'], 4)} | {fmt(s['acc_surgery'])} | {_acc(s, 'acc_bn')} | {_acc(s, 'acc_finetuned')} | "
            f"{fmt(s['allocation_seconds'], 1)} | {fmt(s['latency_ms_b1'])} |"
        )
    return "\n".join(lines) + "\n"


def budget_plot(rows: List[Dict[str, Any]], out: Path, arch: str) -> bool:
    """Accuracy against the MACs ratio, one curve per method (after
    distillation where it ran, else after BatchNorm re-estimation)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = summarise(rows)
    field = "acc_finetuned" if any(s["acc_finetuned"] is not None for s in summary) else "acc_bn"
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in sorted({s["method"] for s in summary}):
        pts = sorted((s["macs_ratio"], s[field]) for s in summary if s["method"] == m and s[field] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("MACs of the pruned model / base model")
    stage = "after distillation" if field == "acc_finetuned" else "after BatchNorm re-estimation"
    ax.set_ylabel(f"top-1 accuracy, % ({stage})")
    ax.set_title(arch)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_cost.png", dpi=120)
    plt.close(fig)
    return True
