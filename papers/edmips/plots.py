"""Figures 4, 6 and 7(b) of the paper, from the files a run leaves behind.

- ``arch_evolution_weights.png`` / ``arch_evolution_activations.png`` (Figure 4): for every searchable layer,
  the probability pi of each candidate bit-width (eq. 11) per search epoch, read from
  ``search/arch_history.json``;
- ``complexity_evolution.png`` (Figure 7(b) style): the complexity of the architecture per search epoch, as
  average bits ``sqrt(BitOps / MACs)`` (the scale of Figure 5's axis): solid, the winner-take-all
  architecture of that epoch; dashed, the expected complexity of eq. 13 (pi-weighted bits), also read from
  ``arch_history.json``. Figure 7(b) draws five ResNet-18 searches of different eta in one plot:
  :func:`plot_complexity_evolution` takes several runs;
- ``bit_allocation.png`` (Figure 6): the discretised weight and activation bits of every layer, read from
  ``discretize/policy.json``, with each layer's share of the MACs (the cost the bits multiply).

``mpq edmips plot RUN_DIR [RUN_DIR ...]`` regenerates them from the run directories alone (with several
runs, their complexity curves also go into one figure, ``--out``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from core.errors import ConfigError
from core.io import atomic_path, read_json

HISTORY_FILE = "arch_history.json"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


def load_history(path: str | os.PathLike) -> dict:
    history = read_json(path, "EdMIPS architecture history", "run `mpq edmips search` first (it records the "
                                                             "architecture evolution there)", ConfigError)
    try:
        _ = history["layers"], history["w_candidates"], history["a_candidates"], history["epochs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not an EdMIPS architecture history ({exc})") from exc
    return history


def plot_arch_evolution(history: dict, out_dir: str | os.PathLike, ncols: int = 6) -> list[Path]:
    """Figure 4: per-layer pi of each candidate bit-width versus search epoch (one file per kind)."""
    plt = _pyplot()
    layers = history["layers"]
    epochs = [e["epoch"] for e in history["epochs"]]
    written = []
    for kind, key, cands in (("weights", "pi_w", history["w_candidates"]),
                             ("activations", "pi_a", history["a_candidates"])):
        nrows = math.ceil(len(layers) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 1.7 * nrows), squeeze=False,
                                 sharex=True, sharey=True)
        for idx, ax in enumerate(axes.flat):
            if idx >= len(layers):
                ax.axis("off")
                continue
            for c, bits in enumerate(cands):
                ax.plot(epochs, [e[key][idx][c] for e in history["epochs"]], label=f"{bits}-bit")
            ax.set_title(f"{idx + 1}: {layers[idx]}", fontsize=6)
            ax.set_ylim(0.0, 1.0)
            ax.tick_params(labelsize=6)
        axes.flat[0].legend(fontsize=6, loc="best")
        fig.suptitle(f"EdMIPS architecture evolution ({kind}): pi per epoch", fontsize=9, y=1.0 + 0.1 / nrows)
        fig.supxlabel("search epoch", fontsize=8, y=-0.06 / nrows)
        written.append(_save(fig, Path(out_dir) / f"arch_evolution_{kind}.png"))
        plt.close(fig)
    return written


def plot_complexity_evolution(histories: list[tuple[str, dict]], out_path: str | os.PathLike) -> Path:
    """Figure 7(b) style: per run (``(label, history)``), the average bits of the winner-take-all
    architecture (solid) and the expected average bits of eq. 13 (dashed) versus search epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for i, (label, history) in enumerate(histories):
        epochs = [e["epoch"] for e in history["epochs"]]
        color = f"C{i % 10}"
        ax.plot(epochs, [e["argmax_avg_bits"] for e in history["epochs"]], "-", color=color,
                label=f"{label} (eta={history.get('eta')})")
        ax.plot(epochs, [e["expected_avg_bits"] for e in history["epochs"]], "--", color=color)
    ax.set_xlabel("search epoch")
    ax.set_ylabel("average bits sqrt(BitOps / MACs)")
    ax.set_title("EdMIPS complexity evolution (dashed: expected, eq. 13)", fontsize=9)
    ax.legend(fontsize=7)
    path = _save(fig, Path(out_path))
    plt.close(fig)
    return path


def plot_bit_allocation(layers: list[dict], out_path: str | os.PathLike,
                        macs: dict[str, float] | None = None, title: str = "") -> Path:
    """Figure 6: weight / activation bits per layer (bars) and each layer's MACs share (line)."""
    plt = _pyplot()
    n = len(layers)
    xs = list(range(1, n + 1))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 3.2))
    ax.bar([x - 0.2 for x in xs], [r["w_bits"] for r in layers], width=0.4, label="weight bits")
    ax.bar([x + 0.2 for x in xs], [r["a_bits"] for r in layers], width=0.4, label="activation bits")
    ax.set_xlabel("layer index (model order)")
    ax.set_ylabel("bits")
    ax.set_xticks(xs)
    ax.tick_params(axis="x", labelsize=6)
    if macs:
        total = sum(macs.get(r["name"], 0.0) for r in layers) or 1.0
        ax2 = ax.twinx()
        ax2.plot(xs, [100.0 * macs.get(r["name"], 0.0) / total for r in layers], "k.--", lw=0.8,
                 label="MACs share (%)")
        ax2.set_ylabel("MACs share (%)")
        ax2.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "EdMIPS bit allocation", fontsize=9)
    path = _save(fig, Path(out_path))
    plt.close(fig)
    return path


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """Accept the run root or its ``search``/``discretize``/``train`` sub-directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    if run_dir.name in ("search", "discretize", "train") and not (run_dir / "search").is_dir():
        run_dir = run_dir.parent
    return run_dir


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """:func:`plot_run` for every run, and with several runs their complexity curves in one figure at
    ``out`` (Figure 7(b) compares searches of different eta)."""
    written = [p for run_dir in run_dirs for p in plot_run(run_dir)]
    if len(run_dirs) > 1:
        runs = [resolve_run_dir(r) for r in run_dirs]
        histories = [(r.name, load_history(r / "search" / HISTORY_FILE)) for r in runs]
        written.append(plot_complexity_evolution(histories, out))
    return written


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Regenerate every figure the files in ``run_dir`` allow; raises if there is nothing to plot."""
    run_dir = resolve_run_dir(run_dir)
    out = run_dir / "plots"
    written: list[Path] = []
    history_path = run_dir / "search" / HISTORY_FILE
    if history_path.is_file():
        history = load_history(history_path)
        written += plot_arch_evolution(history, out)
        written.append(plot_complexity_evolution([(run_dir.name, history)], out / "complexity_evolution.png"))
    policy_path = run_dir / "discretize" / "policy.json"
    if policy_path.is_file():
        data = json.loads(policy_path.read_text())
        meta = data.get("meta", {})
        title = (f"EdMIPS bit allocation ({meta.get('model', '?')}, eta={meta.get('eta', '?')}, "
                 f"avg bits {meta.get('avg_bits', float('nan')):.3f})")
        written.append(plot_bit_allocation(data["layers"], out / "bit_allocation.png",
                                           macs=meta.get("layer_macs"), title=title))
    if not written:
        raise ConfigError(f"nothing to plot in {run_dir}: expected search/{HISTORY_FILE} (from `mpq edmips "
                          "search`) or discretize/policy.json (from `mpq edmips discretize`)")
    return written
