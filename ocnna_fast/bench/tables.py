"""The suites' tables and plots.  Criteria at equal structure: one row per
(criterion, k), means over seeds, accuracy against RPR and k.  Methods at
equal cost: per target one row per method (means over seeds, the range of
the accuracies), accuracy against the MACs ratio, one curve per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .._util.atomic import write_text_atomic
from .results_file import fmt, mean

__all__ = [
    "RESULT_KEYS",
    "MEASURED",
    "summarise_criteria",
    "criteria_table",
    "criteria_plots",
    "summarise_methods",
    "methods_table",
    "methods_plot",
]

RESULT_KEYS = (
    "criterion",
    "k",
    "seed",
    "rpr",
    "macs_ratio",
    "acc_surgery",
    "acc_bn",
    "acc_finetuned",
    "score_seconds",
    "latency_ms_b1",
    "latency_ms_b64",
)


def summarise_criteria(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One line per (criterion, k): means over seeds (and the seed count)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["criterion"], float(r["k"])), []).append(r)
    out = []
    for (c, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        line = {"criterion": c, "k": k, "seeds": len(rs)}
        for f in RESULT_KEYS[3:]:  # what a cell measures (criterion, k and seed name it)
            line[f] = mean([r.get(f) for r in rs])  # a field rows of older code lack is shown as "-"
        for f in ("acc_bn", "acc_finetuned"):
            values = [r[f] for r in rs if r[f] is not None]
            line[f"{f}_min"] = min(values, default=None)
            line[f"{f}_max"] = max(values, default=None)
        out.append(line)
    return out


def criteria_table(
    rows: List[Dict[str, Any]], arch: str, config: Dict[str, Any], base: Optional[Dict[str, Any]] = None
) -> str:
    """Markdown: the base model, the settings, one row per (criterion, k), means over seeds."""
    lines = [f"# Pruning criteria on {arch}, identical structure", ""]
    if base:
        lat = base.get("latency_ms_b1")
        lines += [
            f"Base model: {base['accuracy']:.2f}% top-1 on {config['eval_images']} test images, "
            f"{base['params']:,} parameters, {base['macs']:,} MACs per image"
            + (f", {lat:.2f} ms at batch 1 ({base.get('threads', '?')} threads)" if lat else "")
            + ".",
            "",
        ]
    lines += ["Settings:", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in sorted(config.items())] + [""]
    lines += [
        "| k | criterion | seeds | RPR | MACs ratio | acc. after surgery | acc. after BN | "
        "acc. after fine-tuning | scoring s | latency b1 ms | latency b64 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summarise_criteria(rows):
        bn, ft = (_with_range(s, f) for f in ("acc_bn", "acc_finetuned"))
        lines.append(
            f"| {s['k']:g} | {s['criterion']} | {s['seeds']} | {fmt(s['rpr'], 4)} | "
            f"{fmt(s['macs_ratio'], 4)} | {fmt(s['acc_surgery'])} | {bn} | {ft} | "
            f"{fmt(s['score_seconds'], 1)} | {fmt(s['latency_ms_b1'])} | {fmt(s['latency_ms_b64'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def _with_range(line: Dict[str, Any], field: str) -> str:
    """The mean over seeds, and with several seeds their range."""
    text = fmt(line[field])
    if line["seeds"] > 1 and line[field] is not None:
        text += f" ({fmt(line[field + '_min'])}-{fmt(line[field + '_max'])})"
    return text


def criteria_plots(rows: List[Dict[str, Any]], out: Path, arch: str) -> bool:
    """accuracy vs RPR per criterion, and accuracy vs k; skipped (with a
    message in results.md's folder) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_text_atomic(out / "plots-skipped.txt", "matplotlib is not installed: pip install 'ocnna-fast[bench]'\n")
        return False
    summary = summarise_criteria(rows)
    field = (
        "acc_finetuned"
        if any(s["acc_finetuned"] is not None for s in summary)
        else ("acc_bn" if any(s["acc_bn"] is not None for s in summary) else "acc_surgery")
    )
    for x_field, name, xlabel in (
        ("rpr", "accuracy_vs_rpr.png", "remaining parameters ratio"),
        ("k", "accuracy_vs_k.png", "k (percentile removed per group)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in sorted({s["criterion"] for s in summary}):
            pts = sorted((s[x_field], s[field]) for s in summary if s["criterion"] == c and s[field] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
        ax.set_xlabel(xlabel)
        stage = {"acc_finetuned": "after fine-tuning", "acc_bn": "after BatchNorm re-estimation"}
        ax.set_ylabel(f"top-1 accuracy, % ({stage.get(field, 'right after surgery')})")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    (out / "plots-skipped.txt").unlink(missing_ok=True)
    return True


MEASURED = ("k", "reached", "rpr", "macs_ratio", "acc_surgery", "acc_bn", "acc_finetuned", "allocation_seconds")
MEASURED += ("latency_ms_b1", "latency_ms_b64", "search_passes")


def summarise_methods(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One line per (target, method): means over seeds, and the range of the accuracies."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r)
    out = []
    for (t, m), rs in groups.items():
        line: Dict[str, Any] = {"target": t, "method": m, "seeds": len(rs)}
        for f in MEASURED:
            line[f] = mean([r.get(f) for r in rs])  # a field rows of older code lack is shown as "-"
        for f in ("acc_bn", "acc_finetuned"):
            v = [r[f] for r in rs if r[f] is not None]
            line[f + "_range"] = (min(v), max(v)) if len(v) > 1 else None
        out.append(line)
    return out


def _acc(line: Dict[str, Any], field: str) -> str:
    rng = line[field + "_range"]
    return fmt(line[field]) + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "")


def methods_table(rows: List[Dict[str, Any]], config: Dict[str, Any], base: Dict[str, Any]) -> str:
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
    head += "acc. after distillation | allocation s | search passes | latency b1 ms |"
    lines += [head, "| " + " | ".join(["---"] * 12) + " |"]
    for s in sorted(summarise_methods(rows), key=lambda x: (x["target"], -(x["acc_finetuned"] or x["acc_bn"] or 0))):
        lines.append(
            f"| {s['target']} | {s['method']} | {s['seeds']} | {fmt(s['k'], 2)} | {fmt(s['reached'], 4)} | "
            f"{fmt(s['rpr'], 4)} | {fmt(s['acc_surgery'])} | {_acc(s, 'acc_bn')} | {_acc(s, 'acc_finetuned')} | "
            f"{fmt(s['allocation_seconds'], 1)} | {fmt(s['search_passes'], 1)} | {fmt(s['latency_ms_b1'])} |"
        )
    return "\n".join(lines) + "\n"


def methods_plot(rows: List[Dict[str, Any]], out: Path, arch: str) -> bool:
    """Accuracy against the MACs ratio, one curve per method (after
    distillation where it ran, else after BatchNorm re-estimation)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = summarise_methods(rows)
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
