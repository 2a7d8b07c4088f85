"""Per-layer bit allocation of a policy (weights and activations), like the supplementary's Figure 1."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.io import atomic_path
from core.policy import BitPolicy  # noqa: E402


def plot_bit_allocation(policy: BitPolicy, path: str | os.PathLike,
                        title: str = "LLT bit allocation") -> Path:
    """Grouped bars, one pair (weight, activation) per searchable layer in model order. Written atomically."""
    names = list(policy.layers)
    w = [policy.layers[n][0] for n in names]
    a = [policy.layers[n][1] for n in names]
    x = range(len(names))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(names) + 2), 3.6))
    ax.bar([i - width / 2 for i in x], w, width, label="weight bits", color="#3b75af")
    ax.bar([i + width / 2 for i in x], a, width, label="activation bits", color="#ef8636")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("bit-width")
    top = max(w + a)
    ax.set_ylim(0, top + 1)
    ax.set_yticks(range(0, top + 1))
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150)
    finally:
        plt.close(fig)
    return path
