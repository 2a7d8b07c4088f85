"""BASQ's results: the K-fold table (supplementary Table 2), the mean over folds (Alg. 1 part 3, line 10),
BitOPs under the ``basq`` convention (Table 5: binary BitOPs times ``b_w * b_a``) and ``results.json``."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from core.errors import ConfigError
from papers.basq.config import BASQConfig


def _si(value: float) -> str:
    """``6.7051 G`` / ``1.5759 M``."""
    return f"{value / 1e9:.4f} G" if value >= 1e8 else f"{value / 1e6:.4f} M"


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


def write_results(cfg: BASQConfig, info: Any, search: dict, records: list[dict], seconds: float) -> dict:
    """``<run.out_dir>/finetune/results.json`` (a ``core.results.RunResult``): ``metrics`` are the means
    over the folds (Alg. 1 part 3, line 10), ``extra`` holds the per-fold records; printed as Table 2."""
    import dataclasses

    from core.bops import count
    from core.engine import barrier, is_main
    from core.policy import BitPolicy
    from core.results import run_result
    from core.results import write_results as write_run_result
    from papers.basq.common import build_supernet, input_size

    model, names = build_supernet(cfg)
    bits = cfg.quant.bits
    selections = {str(r["index"]): r["selection"] for r in records}
    policy = BitPolicy({n: (bits, bits) for n in names},
                       meta={"method": "basq", "selections": selections, "lambdas": list(cfg.quant.lambdas)})
    extra = {"bits": bits, "protocol": cfg.search.protocol, "fold_split": cfg.search.fold_split,
             "report_rule": cfg.finetune.report, "folds": records,
             "top1_before_finetune": fold_average([r["heldout_top1_before_finetune"] for r in records])}
    metrics = {"top1": fold_average([r["top1"] for r in records]),
               "top5": fold_average([r["top5"] for r in records])}
    if cfg.search.protocol == "kfold":  # Table 2's columns: set-1 ... set-K
        metrics.update({f"set_{r['index'] + 1}": r["top1"] for r in records})
    result = run_result(cfg, info, paper="basq", method="basq", report=count(model, input_size(cfg),
                                                                             convention="basq"),
                        metrics=metrics,
                        wall_time_s={"search": float(search.get("seconds") or 0.0), "finetune": seconds},
                        policy=policy, extra=extra)
    path = cfg.stage_dir("finetune") / "results.json"
    write_run_result(path, result)
    data = dataclasses.asdict(result)
    if is_main():
        print(render(data))
    barrier()
    return data


def render(results: dict) -> str:
    """The fold table and the summary lines of a BASQ ``results.json``."""
    extra, counts = results["extra"], results["counts"]
    folds, bits = extra["folds"], extra["bits"]
    lines = [fold_table([(f"A{bits}/W{bits}", [f["top1"] for f in folds]),
                         ("before", [f["heldout_top1_before_finetune"] for f in folds])])]
    lines.append(f"{extra['protocol']} protocol, fold accuracy = {extra['report_rule']}; mean top-1 "
                 f"{results['metrics']['top1']:.2f} ({extra['top1_before_finetune']:.2f} before fine-tuning)")
    lines.append(f"BitOPs ({counts['convention']}): {_si(counts['bops'])} "
                 f"({_si(counts['macs'])} binary BitOPs x {bits}^2)")
    return "\n".join(lines)


def clip_table(search: dict) -> str:
    """Per searchable block: the range of its branches' clips and the mean clip the folds selected
    (supplementary Fig. 2)."""
    branch = search.get("branch_clips") or {}
    lines = [f"{'block':<28} {'branch clips':>15} {'selected (mean)':>16}"]
    for name, clips in branch.items():
        chosen = [f["clips"][name] for f in search["folds"] if name in f["clips"]]
        mean = f"{statistics.fmean(chosen):.3f}" if chosen else "-"
        lines.append(f"{name:<28} {f'{min(clips):.3f}-{max(clips):.3f}':>15} {mean:>16}")
    return "\n".join(lines)


def run_report(cfg: BASQConfig) -> str:
    """What ``mpq basq report`` prints: the fine-tuned fold table (or the search's held-out accuracies
    when fine-tuning has not run), BitOPs and the clips."""
    from core.io import read_json

    search_path = cfg.stage_dir("search") / "search.json"
    if not search_path.is_file():
        raise ConfigError(f"nothing to report in {cfg.out}: run `mpq basq supernet`, `search` and "
                          "`finetune` with this config first")
    search = read_json(search_path, "BASQ search results", "run `mpq basq search` with this config")
    results_path = cfg.stage_dir("finetune") / "results.json"
    if results_path.is_file():
        text = render(read_json(results_path, "BASQ results", "run `mpq basq finetune` with this config"))
    else:
        folds, counts = search["folds"], bitops(cfg)
        text = "\n".join([
            "search only (fine-tuning has not run):",
            fold_table([("before", [f["heldout_top1_before_finetune"] for f in folds]),
                        ("fold", [f["fold_top1"] for f in folds])]),
            f"BitOPs ({counts.convention}): {_si(counts.bops)}"])
    return text + "\n" + clip_table(search)
