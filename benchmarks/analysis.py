"""From the benchmark's run records to the report's numbers.

- :func:`amortise`: each search's cost in seconds, shared work divided among the calls that used it
  (the ``search_cost_shared_s`` / ``shared_over`` contract of :mod:`core.method`);
- :func:`pairing_failures`: every trained run of one seed must start from the same initialisation and see
  the same training data order (fingerprints recorded by :func:`benchmarks.recipe.train_policy`);
- :func:`summarise`: one row per (entry, budget) with mean / std over seeds, the convergence verdicts
  (:mod:`benchmarks.convergence`) and the paired differences (:mod:`benchmarks.stats`) to the ``random``
  control at the same budget and to the uniform baseline nearest in BOPs.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from benchmarks.stats import Interval, paired_interval

RANDOM = "random"


def shared_cost(meta: dict, default_key: str) -> dict[str, float]:
    """``{key: seconds}`` of the shared work a policy reports (a number with ``shared_over``, or a dict)."""
    value = meta.get("search_cost_shared_s")
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {str(meta.get("shared_over") or default_key): float(value)}


def amortise(records: list[dict]) -> None:
    """Set ``search_cost_seconds`` (wall) and ``search_cost_cpu_seconds`` of every record (records in call
    order, as the suite keeps them): the call that first reports a piece of shared work is charged its
    time minus that work; every call reporting the piece is charged an equal share of it. The costs of one
    method sum to its time. Pieces are reported in wall seconds; their CPU time is taken at the CPU / wall
    ratio of the call that did them."""
    calls = Counter(k for r in records for k in r.get("shared_cost", {}))
    cpu_share: dict[str, float] = {}
    for r in records:
        pieces = r.get("shared_cost", {})
        new = {k: s for k, s in pieces.items() if k not in cpu_share}
        ratio = r.get("search_cpu_seconds", 0.0) / r["search_seconds"] if r["search_seconds"] > 0 else 0.0
        cpu_share.update({k: s * ratio for k, s in new.items()})
        own = max(0.0, r["search_seconds"] - sum(new.values()))
        own_cpu = max(0.0, r.get("search_cpu_seconds", 0.0) - sum(cpu_share[k] for k in new))
        r["search_cost_seconds"] = own + sum(s / calls[k] for k, s in pieces.items())
        r["search_cost_cpu_seconds"] = own_cpu + sum(cpu_share[k] / calls[k] for k in pieces)


def pairing_failures(records: list[dict]) -> list[str]:
    """One message per seed whose trained runs do not share one initialisation and one data order."""
    out = []
    for seed in sorted({r["seed"] for r in records}):
        rs = [r for r in records if r["seed"] == seed and r.get("init_hash")]
        inits, orders = {r["init_hash"] for r in rs}, {r["order_hash"] for r in rs}
        if len(inits) > 1 or len(orders) > 1:
            out.append(f"seed {seed}: the trained runs are not paired ({len(inits)} initialisations, "
                       f"{len(orders)} data orders across {len(rs)} runs)")
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _by_seed(rs: list[dict]) -> dict[int, float]:
    return {r["seed"]: r["top1"] for r in rs}


def summarise(records: list[dict]) -> list[dict[str, Any]]:
    """One row per (method, budget): means over seeds, convergence and the paired comparisons."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["budget_avg_bits"]), []).append(r)
    rows = []
    for (method, budget), rs in groups.items():
        top1, top1_std = _mean_std([r["top1"] for r in rs])
        verdicts = [r.get("verdict") for r in rs if r["kind"] == "method"]
        converged = sum(1 for v in verdicts if v and v["converged"])
        rows.append({
            "method": method, "kind": rs[0]["kind"], "budget_avg_bits": budget,
            "bops": statistics.fmean(r["bops"] for r in rs),
            "avg_bits": statistics.fmean(r["avg_bits"] for r in rs),
            "top1": top1, "top1_std": top1_std, "seeds": len(rs), "by_seed": _by_seed(rs),
            "search_seconds": statistics.fmean(r["search_seconds"] for r in rs),
            "search_cost_seconds": statistics.fmean(r.get("search_cost_seconds", 0.0) for r in rs),
            "search_cost_cpu_seconds": statistics.fmean(r.get("search_cost_cpu_seconds", 0.0) for r in rs),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
            "train_cpu_seconds": statistics.fmean(r.get("train_cpu_seconds", 0.0) for r in rs),
            "over_budget": any(r["over_budget"] for r in rs),
            "over_time": sum(1 for r in rs if r.get("over_time")),
            "converged_seeds": converged, "searched_seeds": len(verdicts),
            "converged": bool(verdicts) and converged == len(verdicts),
            "verdict_kind": next((v["kind"] for v in verdicts if v), None),
            "verdict_numbers": _mean_numbers([v["numbers"] for v in verdicts if v]),
            "verdict_reasons": sorted({v["reason"] for v in verdicts if v and not v["converged"]})})
    _compare(rows)
    return rows


def _mean_numbers(items: list[dict]) -> dict[str, float]:
    keys = sorted({k for d in items for k in d})
    return {k: statistics.fmean(d[k] for d in items if k in d) for k in keys}


def nearest_uniform(row: dict, rows: list[dict]) -> dict | None:
    uniform = [r for r in rows if r["method"].startswith("uniform")]
    return min(uniform, key=lambda u: abs(u["bops"] - row["bops"])) if uniform else None


def _interval_dict(iv: Interval | None) -> dict | None:
    return None if iv is None else {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def _compare(rows: list[dict]) -> None:
    """``vs_random`` / ``vs_uniform`` (paired t intervals, as dicts) on method and control rows."""
    for row in rows:
        row["vs_random"] = row["vs_uniform"] = row["uniform"] = None
        if row["kind"] not in ("method", "control"):
            continue
        if row["kind"] == "method":
            rand = next((r for r in rows if r["method"] == RANDOM and r["kind"] == "control"
                         and r["budget_avg_bits"] == row["budget_avg_bits"]), None)
            if rand is not None:
                row["vs_random"] = _interval_dict(paired_interval(row["by_seed"], rand["by_seed"]))
        uni = nearest_uniform(row, rows)
        if uni is not None:
            row["uniform"] = uni["method"]
            row["vs_uniform"] = _interval_dict(paired_interval(row["by_seed"], uni["by_seed"]))


def as_interval(d: dict | None) -> Interval | None:
    return None if d is None else Interval(d["mean"], d["low"], d["high"], d["n"])
