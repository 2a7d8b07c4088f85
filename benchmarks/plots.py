"""Plots of the cross-method benchmark: the Pareto front and each method's bit allocation (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from core.io import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> None:
    """Save atomically (tmp + os.replace)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_pareto(summary: list[dict], path: str | Path) -> None:
    """Top-1 (mean +- std over seeds) against BOPs of the searchable layers, one series per method.

    Uniform baselines and the ``random`` control form one series each; the float model is a horizontal
    reference line. A point whose search did not converge (not ranked in the report) is drawn hollow.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    uniform = sorted((r for r in summary if r["method"].startswith("uniform")), key=lambda r: r["bops"])
    if uniform:
        ax.errorbar([r["bops"] for r in uniform], [r["top1"] for r in uniform],
                    yerr=[r["top1_std"] for r in uniform], fmt="s--", color="gray", capsize=3,
                    label="uniform")
        for r in uniform:
            ax.annotate(r["method"].replace("uniform ", ""), (r["bops"], r["top1"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7, color="gray")
    for r in summary:
        if r["method"].startswith("float"):
            ax.axhline(r["top1"], color="black", lw=0.8, ls=":", label=f"float {r['top1']:.1f}%")
    rand = sorted((r for r in summary if r["kind"] == "control"), key=lambda r: r["bops"])
    if rand:
        ax.errorbar([r["bops"] for r in rand], [r["top1"] for r in rand], yerr=[r["top1_std"] for r in rand],
                    fmt="x:", color="black", capsize=3, label="random (control)")
    methods = sorted({r["method"] for r in summary if r["kind"] == "method"})
    markers = "o^vD<>p*h"
    for i, m in enumerate(methods):
        rs = sorted((r for r in summary if r["method"] == m), key=lambda r: r["bops"])
        line = ax.errorbar([r["bops"] for r in rs], [r["top1"] for r in rs], yerr=[r["top1_std"] for r in rs],
                           fmt=markers[i % len(markers)] + "-", capsize=3, label=m)
        hollow = [r for r in rs if not r.get("converged", True)]
        if hollow:
            ax.plot([r["bops"] for r in hollow], [r["top1"] for r in hollow], markers[i % len(markers)],
                    markersize=9, markerfacecolor="white", color=line.lines[0].get_color())
    ax.set_xlabel("BOPs of the searchable layers (MACs x w_bits x a_bits)")
    ax.set_ylabel("val top-1 (%), mean +- std over seeds")
    ax.set_title("Accuracy vs BOPs: every method, same network, budgets and recipe\n"
                 "(hollow: search not converged)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def plot_bit_allocation(method: str, records: list[dict], path: str | Path) -> None:
    """Per-layer weight / activation bits of one method's policies (one seed), one panel per budget."""
    records = sorted(records, key=lambda r: r["budget_avg_bits"])
    fig, axes = plt.subplots(len(records), 1, figsize=(7, 2.2 * len(records)), squeeze=False)
    for ax, r in zip(axes[:, 0], records):
        layers = r["policy"]["layers"]
        x = range(len(layers))
        ax.bar([i - 0.2 for i in x], [e["w_bits"] for e in layers], width=0.4, label="weights")
        ax.bar([i + 0.2 for i in x], [e["a_bits"] for e in layers], width=0.4, label="activations")
        ax.set_xticks(list(x))
        ax.set_xticklabels([e["name"] for e in layers], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("bits")
        ax.set_ylim(0, max(max(e["w_bits"], e["a_bits"]) for e in layers) + 2)
        ax.set_title(f"{method}: budget {r['budget_avg_bits']:g} avg bits -> {r['avg_bits']:.2f} "
                     f"(seed {r['seed']})", fontsize=9)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    _save(fig, Path(path))
