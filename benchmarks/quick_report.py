"""The cross-method benchmark's ``report.md``: the table, sentences generated from its intervals, the
convergence diagnostics and where the time went. Every number comes from ``suite.json``'s data."""

from __future__ import annotations

import statistics

from benchmarks.analysis import as_interval
from benchmarks.convergence import CRITERIA
from benchmarks.stats import paired_interval, phrase


def _bops(x: float) -> str:
    return f"{x / 1e6:.3f} M" if x < 1e9 else f"{x / 1e9:.3f} G"


def _label(r: dict) -> str:
    return r["method"] if r["budget_avg_bits"] is None else f"{r['method']} @ {r['budget_avg_bits']:g}"


def _ranked(r: dict) -> bool:
    return r["kind"] == "control" or (r["kind"] == "method" and r["converged"])


def _delta(r: dict, key: str) -> str:
    iv = as_interval(r.get(key))
    if r["kind"] == "baseline" or iv is None:
        return "-"
    if not _ranked(r):
        return "not ranked"
    return f"{iv.text()} n={iv.n}" + (" *" if iv.resolved else "")


def _converged(r: dict) -> str:
    if r["kind"] != "method":
        return "-"
    text = f"{r['converged_seeds']}/{r['searched_seeds']}"
    return text if r["converged"] else f"**NO** ({text})"


def _order(r: dict) -> tuple:
    return ({"baseline": 0, "control": 1, "method": 2}[r["kind"]], r["method"] != "float (FP32)",
            r["method"] if r["kind"] == "method" else "", r["budget_avg_bits"] or 0, r["bops"])


def results_table(summary: list[dict]) -> list[str]:
    lines = ["| entry | budget (avg bits) | BOPs | avg bits | top-1 (%) mean +- std | vs random (points) | "
             "vs nearest uniform (points) | converged | search cost (CPU s) | train (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary, key=_order):
        budget = "-" if r["budget_avg_bits"] is None else f"{r['budget_avg_bits']:g}"
        flag = " (over budget)" if r["over_budget"] else ""
        uni = "-" if not r.get("uniform") else \
            f"{_delta(r, 'vs_uniform')} ({r['uniform'].removeprefix('uniform ')})"
        cost = "-" if r["kind"] == "baseline" else f"{r['search_cost_cpu_seconds']:.1f}" + (
            f" ({r['over_time']} over the time budget)" if r.get("over_time") else "")
        lines.append(f"| {r['method']} | {budget} | {_bops(r['bops'])} | {r['avg_bits']:.3f}{flag} | "
                     f"{r['top1']:.2f} +- {r['top1_std']:.2f} | {_delta(r, 'vs_random')} | {uni} | "
                     f"{_converged(r)} | {cost} | {r['train_cpu_seconds']:.1f} |")
    return lines


def findings(summary: list[dict]) -> list[str]:
    """Sentences generated from the paired intervals (:func:`benchmarks.stats.phrase`)."""
    out = []
    for r in sorted(summary, key=_order):
        if r["kind"] == "baseline":
            continue
        name = _label(r)
        if not _ranked(r):
            reasons = "; ".join(r["verdict_reasons"]) or "no diagnostics"
            failed = r["searched_seeds"] - r["converged_seeds"]
            out.append(f"- {name}: the search did not converge on {failed} of {r['searched_seeds']} seeds "
                       f"({reasons}); not compared.")
            continue
        if r["kind"] == "method":
            rand = f"random @ {r['budget_avg_bits']:g}"
            out.append("- " + phrase(name, rand, as_interval(r.get("vs_random"))))
        if r.get("uniform"):
            out.append("- " + phrase(name, r["uniform"], as_interval(r.get("vs_uniform"))))
    return out


def resolution(summary: list[dict]) -> list[str]:
    """How finely this setting resolves accuracy: consecutive uniform baselines' paired differences and
    the median half-width of the comparisons in the table."""
    uniform = sorted((r for r in summary if r["method"].startswith("uniform")), key=lambda r: r["bops"])
    out = []
    for lo, hi in zip(uniform, uniform[1:]):
        iv = paired_interval(hi["by_seed"], lo["by_seed"])
        text = f"{iv.text()} points (n={iv.n})" if iv else "no shared seed"
        out.append(f"- {hi['method']} vs {lo['method']}: {text}")
    halves = sorted((iv["high"] - iv["low"]) / 2 for r in summary if _ranked(r)
                    for key in ("vs_random", "vs_uniform") if (iv := r.get(key)) and iv["low"] is not None)
    if halves:
        out.append(f"- median half-width of the {len(halves)} ranked intervals in the table: "
                   f"{statistics.median(halves):.2f} points")
    return out


def _numbers(r: dict) -> str:
    n = r["verdict_numbers"]
    kind = r["verdict_kind"]
    if kind == "distribution":
        text = f"confidence {n.get('confidence', 0):.2f}, mean max-prob {n.get('mean_max_prob', 0):.2f}"
        if "norm_entropy" in n:
            text += f", normalised entropy {n['norm_entropy']:.2f}"
        if "exp_bops_start" in n:
            text += f", E[BOPs] {_bops(n['exp_bops_start'])} -> {_bops(n['exp_bops_end'])}"
        return text
    if kind == "importance":
        text = f"monotone {n.get('monotone_fraction', 0):.2f}, change {n.get('indicator_change', 0):.3f}"
        return text + (f", last epoch {n['last_epoch_change']:.3f}" if "last_epoch_change" in n else "")
    if kind == "evolution":
        return (f"{n.get('iterations', 0):.0f} iterations, gain {n.get('total_gain', 0):.3g}, last quarter "
                f"{n.get('late_gain', 0):.3g}")
    return "; ".join(r["verdict_reasons"]) or "-"


def convergence_table(summary: list[dict]) -> list[str]:
    lines = ["| method | budget | kind | diagnostics (mean over seeds) | converged seeds |",
             "|---|---|---|---|---|"]
    for r in sorted((r for r in summary if r["kind"] == "method"), key=_order):
        lines.append(f"| {r['method']} | {r['budget_avg_bits']:g} | {r['verdict_kind'] or '-'} | "
                     f"{_numbers(r)} | {r['converged_seeds']}/{r['searched_seeds']} |")
    return lines


def time_table(data: dict) -> list[str]:
    """CPU seconds (one thread per process) per entry: searches and trainings, and their share."""
    runs, units = data["runs"], data.get("units", [])
    total = sum(u.get("cpu_seconds", 0.0) for u in units) or 1.0
    entries: dict[str, dict] = {}
    for r in runs:
        key = "baselines (float, uniform)" if r["kind"] == "baseline" else r["method"]
        e = entries.setdefault(key, {"search": 0.0, "train": 0.0, "calls": 0})
        e["search"] += r.get("search_cpu_seconds", 0.0)
        e["train"] += r.get("train_cpu_seconds", 0.0)
        e["calls"] += r["kind"] != "baseline"
    lines = ["| entry | search (CPU s, all calls) | per call (CPU s) | training (CPU s) | share of the CPU |",
             "|---|---|---|---|---|"]
    for key, e in sorted(entries.items(), key=lambda kv: -(kv[1]["search"] + kv[1]["train"])):
        per_call = f"{e['search'] / e['calls']:.1f}" if e["calls"] else "-"
        lines.append(f"| {key} | {e['search']:.1f} | {per_call} | {e['train']:.1f} | "
                     f"{100 * (e['search'] + e['train']) / total:.0f} % |")
    rest = total - sum(e["search"] + e["train"] for e in entries.values())
    lines.append(f"| other (counting, building, writing) | - | - | - | {100 * rest / total:.0f} % |")
    return lines


def render_quick_markdown(data: dict, images: list[str]) -> str:
    s, env, summary = data["settings"], data["environment"], data["summary"]
    rec = s["recipe"]
    n_seeds = len(s["seeds"])
    limit = s.get("search_time_budget_s")
    units = data.get("units", [])
    cpu, jobs = sum(u.get("cpu_seconds", 0.0) for u in units), env.get("jobs", 1)
    lines = [
        f"# Cross-method benchmark ({s['dataset']})", "",
        f"{env['date']} on `{env['machine']}` ({env['processor']}, {env['cpu_count']} CPUs, torch "
        f"{env['torch']}, {env.get('jobs', 1)} process(es) x {env['torch_threads']} thread(s), device "
        f"{env['device']}); total wall time {env['wall_seconds']:.0f} s"
        + (f"; load average at the end {env['load_average']}" if env.get("load_average") else "") + ".", "",
        f"Network `{s['model']}` {s['model_kwargs']} at {s['image_size']}x{s['image_size']}; candidates "
        f"W{list(s['w_candidates'])} A{list(s['a_candidates'])}; first conv and last linear float; budgets "
        f"{list(s['budgets'])} average bits (budget_bops = b^2 x MACs of the searchable layers, core.bops "
        f"bpnas convention); search budget {s['search_epochs']} epochs"
        + (f" and {limit:g} s per call" if limit else "") + f"; seeds {' '.join(map(str, s['seeds']))}.",
        f"Shared recipe: every network (float, uniform, random, each method's policy) trained "
        f"{rec['epochs']} epochs from the seed's initialisation with LSQ QConv2d (SGD lr {rec['lr']}, "
        f"momentum {rec['momentum']}, wd {rec['weight_decay']}, cosine, batch {rec['batch_size']}); top-1 on "
        "the val split. Runs of one seed share the initialisation and the data order (checked).",
        f"Controls: `uniform WxAy`; `random` = per seed and budget, {s['random_draws']} policies drawn "
        f"uniformly from the search space within [b - {s['random_tolerance_bits']:g}, b] average bits, the "
        "one with the most BOPs kept.",
        f"Differences are paired by seed: mean [95 % t interval] over the {n_seeds} seeds, in points of "
        "top-1; * marks an interval that excludes 0. The nearest uniform baseline is the one nearest in "
        "BOPs. A row whose search did not converge on every seed is not ranked. Criteria: "
        + "; ".join(f"{k}: {v}" for k, v in CRITERIA.items()) + ".", "",
        *results_table(summary), "",
        "## Findings (generated from the intervals)", "", *findings(summary), "",
        "## Resolution of this setting", "", *resolution(summary), "",
        "## Search convergence", "", *convergence_table(summary), "",
        "## Where the time goes", "",
        f"CPU time of the {len(units)} units: {cpu:.0f} s in {jobs} process(es) of one thread, i.e. "
        f"{cpu / jobs:.0f} s of wall time on {jobs} idle core(s); measured wall time "
        f"{env['wall_seconds']:.0f} s (CPU time is robust to other load on the machine, wall time is not). "
        "A search's cost per call divides work shared by several budgets among them (core/method.py).", "",
        *time_table(data), "",
    ]
    if data.get("failures"):
        lines += ["**Failures:**", ""] + [f"- {f}" for f in data["failures"]] + [""]
    if data.get("unavailable_methods"):
        lines += ["Unavailable methods: " + ", ".join(f"{k} ({v})" for k, v in
                                                       data["unavailable_methods"].items()), ""]
    lines += [f"![{img}]({img})" for img in images] + [""]
    return "\n".join(lines)
