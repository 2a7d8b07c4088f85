"""Figures from the files a run leaves behind (``mpq onemps plot RUN_DIR``).

- ``bits_vs_eta.png`` (slide "Intuition behind the bit width probability model"): per searchable layer, the
  expected weight and activation bits under pi_theta(eta) over the eta range, and the network's expected
  average bits sqrt(E[BOPs] / MACs); read from ``supernet/arch_curve.json``;
- ``pareto.png``: top-1 of every swept child under the supernet against its BOPs, the non-dominated set
  joined; read from ``pareto/candidates.json`` and ``pareto/front.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.io import atomic_path, read_json

CURVE_FILE = "arch_curve.json"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_bits_vs_eta(curve: dict, path: Path) -> Path:
    """Expected bits per layer vs eta (log axis), weights and activations side by side."""
    plt = _pyplot()
    etas = [p["eta"] for p in curve["points"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, role, title in ((axes[0], 0, "weights"), (axes[1], 1, "activations")):
        for k, name in enumerate(curve["layers"]):
            ax.plot(etas, [p["expected_bits"][k][role] for p in curve["points"]], lw=1, alpha=0.7,
                    label=name if len(curve["layers"]) <= 12 else None)
        ax.plot(etas, [p["expected_avg_bits"] for p in curve["points"]], "k", lw=2.5,
                label="network: sqrt(E[BOPs]/MACs)")
        ax.set_xscale("log")
        ax.set_xlabel("hardware penalty eta")
        ax.set_title(f"E[bits] of the {title} under pi_theta(eta)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected bits")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_pareto(candidates: list[dict], front: list[dict], path: Path, title: str = "") -> Path:
    """Top-1 vs BOPs of the swept children; the non-dominated ones joined and labelled with their eta."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([c["bops"] for c in candidates], [c["top1"] for c in candidates], c="0.6", s=18,
               label="swept children")
    pts = sorted(front, key=lambda c: c["bops"])
    ax.plot([c["bops"] for c in pts], [c["top1"] for c in pts], "o-", c="C3", label="Pareto front")
    for c in pts:
        ax.annotate(f"{c['eta']:.3g}", (c["bops"], c["top1"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.set_xlabel("BOPs (searchable layers)")
    ax.set_ylabel("top-1 under the supernet (%)")
    ax.set_title(title or "One-shot Pareto front (labels: eta)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_run(cfg: Any) -> list[Path]:
    """Every figure the run directory of ``cfg`` has data for, into RUN_DIR/plots/."""
    from papers.onemps.common import run_paths

    paths = run_paths(cfg)
    out = []
    curve = read_json(paths["supernet"] / CURVE_FILE, "architecture curve", "run `mpq onemps train` first",
                      ConfigError)
    out.append(plot_bits_vs_eta(curve, paths["root"] / "plots" / "bits_vs_eta.png"))
    cand_file = paths["pareto"] / "candidates.json"
    if cand_file.is_file():
        fix = "re-run `mpq onemps pareto RUN_DIR`"
        cands = read_json(cand_file, "candidate list", fix, ConfigError)
        front = read_json(paths["pareto"] / "front.json", "Pareto front", fix, ConfigError)
        out.append(plot_pareto(cands["candidates"], front["front"], paths["root"] / "plots" / "pareto.png"))
    return out
