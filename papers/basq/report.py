"""BASQ's results: the K-fold table (supplementary Table 2), the mean over folds (Alg. 1 part 3, line 10),
BitOPs under the ``basq`` convention (Table 5: binary BitOPs times ``b_w * b_a``) and ``results.json``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any

from core.errors import ConfigError
from papers.basq.config import BASQConfig


def fold_average(values: Sequence[float]) -> float:
    """Alg. 1 part 3, line 10: ``ACC = Average(ACC_1, ..., ACC_K)``."""
    if not values:
        raise ConfigError("fold_average: no fold accuracies")
    return statistics.fmean(float(v) for v in values)


def fold_table(rows: Sequence[tuple[str, Sequence[float]]], decimals: int = 2) -> str:
    """Rows ``(label, [fold accuracies])`` as supplementary Table 2: ``Bit  set-1 ... set-K  Average``."""
    k = max(len(v) for _, v in rows)
    width = max(6, decimals + 4)
    head = ["Bit".ljust(8)] + [f"set-{i + 1}".rjust(width) for i in range(k)] + ["Average".rjust(8)]
    lines = [" ".join(head)]
    for label, values in rows:
        cells = [f"{v:.{decimals}f}".rjust(width) for v in values] + [" " * width] * (k - len(values))
        lines.append(" ".join([label.ljust(8), *cells, f"{fold_average(values):.{decimals}f}".rjust(8)]))
    return "\n".join(lines)


def bitops(cfg: BASQConfig) -> Any:
    """``core.bops.count`` of this config's network at its bits under the ``basq`` convention."""
    from core.bops import count
    from papers.basq.common import build_supernet, input_size

    model, _ = build_supernet(cfg)
    return count(model, input_size(cfg), convention="basq")


def write_results(cfg: BASQConfig, search: dict, records: list[dict], seconds: float) -> dict:
    """``<run.out_dir>/finetune/results.json``: the per-fold records and their mean (rank 0 writes)."""
    import platform

    import torch

    from core.engine import barrier, code_version, get_info, is_main
    from core.io import atomic_write_json

    info = get_info()
    counts = bitops(cfg)
    top1 = fold_average([r["top1"] for r in records])
    results = {
        "paper": "BASQ (ECCV 2022)", "method": "basq", "table_row": cfg.table_row, "model": cfg.model.name,
        "dataset": cfg.data.name, "bits": cfg.quant.bits, "protocol": cfg.search.protocol,
        "report_rule": cfg.finetune.report, "top1": top1, "folds": records,
        "bops_convention": counts.convention, "bitops": counts.bops, "macs": counts.macs,
        "params": counts.params, "wall_time_s": {"search": search.get("seconds"), "finetune": seconds},
        "device": str(info.device), "world_size": info.world_size, "seed": cfg.run.seed,
        "code_version": code_version(), "python": platform.python_version(), "torch": torch.__version__,
        "config": json.loads(json.dumps(_config_dict(cfg), default=str)),
    }
    if is_main():
        atomic_write_json(cfg.out / "finetune" / "results.json", results)
        print(render(results))
    barrier()
    return results


def _config_dict(cfg: BASQConfig) -> dict:
    from core.config import config_to_dict

    return config_to_dict(cfg)


def render(results: dict) -> str:
    """The fold table and the summary lines of a ``results.json``."""
    folds = results["folds"]
    label = f"A{results['bits']}/W{results['bits']}"
    lines = [fold_table([(label, [f["top1"] for f in folds])])]
    before = [f["heldout_top1_before_finetune"] for f in folds]
    lines.append(fold_table([("before", before)]).splitlines()[1])
    lines.append(f"{results['protocol']} protocol, fold accuracy = {results['report_rule']}; mean top-1 "
                 f"{results['top1']:.2f} ({fold_average(before):.2f} before fine-tuning)")
    lines.append(f"BitOPs ({results['bops_convention']}): {results['bitops'] / 1e9:.4f} G "
                 f"({results['macs'] / 1e9:.4f} G binary BitOPs x {results['bits']}^2)")
    return "\n".join(lines)


def run_report(cfg: BASQConfig) -> str:
    """What ``mpq basq report`` prints: the fine-tuned fold table (or the search's held-out accuracies
    when fine-tuning has not run), BitOPs and the selected clips."""
    results_path = cfg.out / "finetune" / "results.json"
    if results_path.is_file():
        text = render(json.loads(results_path.read_text()))
    else:
        search_path = cfg.out / "search" / "search.json"
        if not search_path.is_file():
            raise ConfigError(f"nothing to report in {cfg.out}: run `mpq basq supernet`, `search` and "
                              "`finetune` with this config first")
        folds = json.loads(search_path.read_text())["folds"]
        counts = bitops(cfg)
        text = "\n".join([
            "search only (fine-tuning has not run):",
            fold_table([("before", [f["heldout_top1_before_finetune"] for f in folds]),
                        ("fold", [f["fold_top1"] for f in folds])]),
            f"BitOPs ({counts.convention}): {counts.bops / 1e9:.4f} G"])
    return text
