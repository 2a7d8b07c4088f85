"""Figures: the search's architecture evolution, and supp. Fig. 1 / Fig. 2 as runs that write PNGs.

- :func:`plot_search`: ``p`` of every block over the search epochs, and E(SN) / the argmax network's average
  bits against B_max (from ``search/arch_history.json``).
- :func:`run_figure` ``("fig1")``: supp. section 5, Fig. 1: one random block policy from
  ``figures.pairs`` (default {(1,1),(2,2),(4,4),(8,8)}) trained twice, with and without weight
  uniformization (``quant.uniformize``), everything else equal; training loss and validation accuracy per
  epoch.
- :func:`run_figure` ``("fig2")``: Fig. 2: the same policy with distribution reshaping (``scale_clip``
  weights and activations) and with PACT (PACT activations, DoReFa weights as in the PACT paper:
  ``figures.baseline_a_quant`` / ``baseline_w_quant``); validation accuracy per epoch.

Each arm is an ordinary training run (``RUN_DIR/figures/<fig>/<arm>/``, resumable, with its results.json);
the PNG is drawn from the arms' ``metrics.jsonl``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from core.engine import is_main, log
from core.errors import ConfigError
from papers.bpnas.common import FIGURES_DIR, TRAIN_DIR
from papers.bpnas.config import BpnasConfig

FIGURES = ("fig1", "fig2")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epoch_records(train_dir: Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` (the last one per epoch, if resumed)."""
    path = Path(train_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found: the run has not trained yet")
    records: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line of an interrupted run
        if rec.get("kind") == "epoch":
            records[int(rec["epoch"])] = rec
    return [records[e] for e in sorted(records)]


def figure_arms(cfg: BpnasConfig, figure: str) -> list[tuple[str, BpnasConfig]]:
    """``(label, config)`` of each training run of a figure, all on the random block policy."""
    if figure not in FIGURES:
        raise ConfigError(f"unknown figure {figure!r}; choose one of {list(FIGURES)}")
    root = Path(cfg.run.out_dir) / FIGURES_DIR / figure

    def arm(label: str, **quant: object) -> tuple[str, BpnasConfig]:
        c = copy.deepcopy(cfg)
        c.train.policy = "random"
        for key, value in quant.items():
            setattr(c.quant, key, value)
        c.run.out_dir = str(root / label.replace(" ", "_").lower())
        return label, c

    if figure == "fig1":
        return [arm("with uniformization", w_quant="scale_clip", uniformize=True),
                arm("without uniformization", w_quant="scale_clip", uniformize=False)]
    return [arm("distribution reshaping", w_quant="scale_clip", a_quant="scale_clip", uniformize=True),
            arm("PACT", w_quant=cfg.figures.baseline_w_quant, a_quant=cfg.figures.baseline_a_quant)]


def plot_figure(figure: str, arms: list[tuple[str, Path]], path: Path, title: str = "") -> Path:
    """Training loss (fig1) and validation top-1 per epoch of each arm's run directory."""
    plt = _pyplot()
    panels = [("train_loss", "training loss"), ("val_top1", "validation top-1 (%)")]
    if figure == "fig2":
        panels = panels[1:]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, run_dir in arms:
            recs = [r for r in epoch_records(Path(run_dir) / TRAIN_DIR) if key in r]
            ax.plot([r["epoch"] + 1 for r in recs], [r[key] for r in recs], marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_figure(cfg: BpnasConfig, figure: str) -> Path:
    """Train every arm of ``figure`` (resuming finished or interrupted arms) and write its PNG."""
    from papers.bpnas.train import run_train

    arms = figure_arms(cfg, figure)
    for label, c in arms:
        log(f"BP-NAS {figure}: training the arm '{label}' -> {c.run.out_dir}")
        run_train(c)
    path = Path(cfg.run.out_dir) / FIGURES_DIR / f"{figure}.png"
    pairs = ", ".join(f"({w},{a})" for w, a in cfg.figures.pairs)
    title = (f"{cfg.model.name} on {cfg.data.name}: random blocks from {{{pairs}}}, seed {cfg.figures.seed}")
    if is_main():
        plot_figure(figure, [(label, Path(c.run.out_dir)) for label, c in arms], path, title)
    return path


def plot_search(run_dir: str | Path) -> list[Path]:
    """``p`` per block and E(SN) over the search epochs -> RUN_DIR/plots/*.png."""
    root = Path(run_dir)
    path = root / "search" / "arch_history.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: give the run directory (run.out_dir) of a BP-NAS search")
    history = json.loads(path.read_text())
    epochs = history["epochs"]
    if not epochs:
        raise ConfigError(f"{path} has no recorded epoch")
    plt = _pyplot()
    out = root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    blocks, pairs = history["blocks"], history["pairs"]
    cols = min(3, len(blocks))
    rows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    xs = [e["epoch"] for e in epochs]
    for i, (name, cands) in enumerate(zip(blocks, pairs)):
        ax = axes[i // cols][i % cols]
        for k, (w, a) in enumerate(cands):
            ax.plot(xs, [e["probs"][i][k] for e in epochs], label=f"W{w}A{a}")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
    for j in range(len(blocks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("architecture probabilities p per block")
    fig.tight_layout()
    evolution = out / "arch_evolution.png"
    fig.savefig(evolution, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, [e["expected_avg_bits"] for e in epochs], marker=".", label="E(SN) (expected)")
    ax.plot(xs, [e["argmax_avg_bits"] for e in epochs], marker=".", label="argmax network")
    ax.axhline(history["b_max"], color="k", linestyle="--", label="B_max")
    ax.set_xlabel("epoch")
    ax.set_ylabel("average bits sqrt(BOPs / FLOPs)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    budget = out / "complexity.png"
    fig.savefig(budget, dpi=110)
    plt.close(fig)
    return [evolution, budget]
