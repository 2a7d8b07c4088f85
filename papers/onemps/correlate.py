"""The correlation study (slide "Correlation between the child and standalone model performances"):
Kendall's tau between the accuracy of M architectures as children of a supernet and their accuracy when
trained standalone, per configuration (one-shot, the EdMIPS proxy, DNAS). The slide's ResNet-18 / ImageNet
values: One-Shot 0.97, EdMIPS 0.29, DNAS 0.52.

Protocol (``mpq onemps correlate -c CONFIG``; the slides give none, every step is a documented choice):

1. M architectures (``correlate.architectures``) drawn once (seed ``correlate.seed``) and shared by every
   configuration, spread over the BOPs range: architecture m has a target level u_m = m / (M - 1) and each
   layer's weight and activation option is round(u_m (n - 1) + N(0, 0.75)) clipped to the n options
   (:func:`sample_architectures`);
2. standalone: each architecture as a fixed-precision network (:func:`papers.onemps.finetune.extract_child`
   of a freshly built supernet: the float weights, ``model.pretrained`` or the seeded initialisation)
   trained with ``correlate.optim`` / ``correlate.schedule``, BN re-estimated, top-1 on val;
3. per configuration in ``correlate.presets`` (:data:`papers.onemps.config.PRESETS`): one supernet trained
   with the run's config plus the preset's overrides; each architecture evaluated as its child (pinned, BN
   re-estimated on ``pareto.bn_images`` images, top-1 on val);
4. tau = ``scipy.stats.kendalltau`` (tau-b) of the child accuracies against the standalone accuracies.

Writes ``RUN_DIR/correlate/kendall.json`` and, per configuration, ``RUN_DIR/correlate/<preset>/results.json``
(``metrics.tau``; ``table_row`` from ``correlate.table_rows``, so ``mpq bench check`` compares it with the
slide; its counts are those of the float network the architectures come from). Every training is a
resumable run directory under it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from core.bops import count
from core.config import build_config, config_to_dict, parse_overrides
from core.engine import is_main, log
from core.io import atomic_write_json
from core.results import run_result, write_results
from papers.onemps.common import build_data, float_model, run_paths, setup
from papers.onemps.config import PRESETS, OneMpsConfig
from papers.onemps.finetune import extract_child, train_child
from papers.onemps.losses import HardwareCosts
from papers.onemps.pareto import evaluate_child
from papers.onemps.train import build_for_training, fit_supernet, supernet_identity

KENDALL_FILE = "kendall.json"


def kendall_tau(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """Kendall's tau-b of two paired samples and its p-value (scipy.stats.kendalltau); ``(None, None)``
    when it is undefined (one sample constant)."""
    import math

    from scipy.stats import kendalltau

    res = kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    return (None, None) if math.isnan(tau) else (tau, p)


def sample_architectures(costs: HardwareCosts, m: int, seed: int = 0) -> list[dict[str, tuple[int, int]]]:
    """M distinct architectures spread from the cheapest to the most expensive (module docstring, step 1)."""
    g = torch.Generator().manual_seed(seed)
    out: list[dict[str, tuple[int, int]]] = []
    seen: set[tuple] = set()
    attempts = 0
    while len(out) < m:
        u = len(out) / max(1, m - 1)
        choice = {}
        for name, w, a in zip(costs.names, costs.w_candidates, costs.a_candidates):
            pick = [int(min(n - 1, max(0, round(u * (n - 1) + 0.75 * float(torch.randn((), generator=g))))))
                    for n in (len(w), len(a))]
            choice[name] = (pick[0], pick[1])
        key = tuple(choice[n] for n in costs.names)
        attempts += 1
        if key not in seen or attempts > 50 * m:
            seen.add(key)
            out.append(choice)
    return out


def preset_config(cfg: OneMpsConfig, preset: str) -> OneMpsConfig:
    """``cfg`` with the preset's overrides applied (VIMPS / DNAS / EdMIPS proxy: PRESETS)."""
    data = config_to_dict(cfg)
    for key, value in parse_overrides(PRESETS[preset]).items():
        data[key] = {**data.get(key, {}), **value}
    return build_config(OneMpsConfig, data)


def run_correlate(cfg: OneMpsConfig) -> dict[str, Any]:
    """``mpq onemps correlate``: the study above -> RUN_DIR/correlate/kendall.json."""
    t0 = time.perf_counter()
    info = setup(cfg)
    root = run_paths(cfg)["correlate"]
    c = cfg.correlate
    data = build_data(cfg, info, cfg.search.max_steps_per_epoch)
    fresh, costs = build_for_training(cfg, data.input_size, info.device)
    float_report = count(float_model(cfg), data.input_size, convention="bpnas")
    archs = sample_architectures(costs, c.architectures, c.seed)
    records = [{"policy": {n: [fresh.get_submodule(n).w_candidates[i], fresh.get_submodule(n).a_candidates[j]]
                           for n, (i, j) in a.items()}, "bops": costs.bops(a)} for a in archs]
    standalone = []
    for k, arch in enumerate(archs):
        child = extract_child(fresh, arch)
        metrics, _ = train_child(cfg, child, data, info.device, root / "standalone" / f"arch{k}", c.optim,
                                 c.schedule, config={"correlate": config_to_dict(cfg), "architecture": k})
        standalone.append(metrics["top1"])
        log(f"correlate: architecture {k} ({records[k]['bops']:.4g} BOPs): standalone top-1 "
            f"{metrics['top1']:.2f}")
    del fresh
    results: dict[str, Any] = {}
    for preset in c.presets:
        pcfg = preset_config(cfg, preset)
        supernet, pcosts = build_for_training(pcfg, data.input_size, info.device)
        summary = fit_supernet(pcfg, supernet, pcosts, data.train, None, info.device, root / preset,
                               identity=supernet_identity(pcfg))
        accs = [evaluate_child(supernet, arch, data.train, data.val, cfg.pareto.bn_images, info.device,
                               cfg.pareto.max_eval_batches)["top1"] for arch in archs]
        tau, p_value = kendall_tau(accs, standalone)
        results[preset] = {"tau": tau, "p_value": p_value, "supernet_top1": accs,
                           "supernet_train_s": summary["wall_time_s"]}
        if tau is None:
            log(f"correlate: {preset}: Kendall tau undefined (every child, or every standalone network, "
                "scored the same); no results.json")
            continue
        log(f"correlate: {preset}: Kendall tau {tau:.3f} (p={p_value:.3g})")
        write_results(root / preset / "results.json", dataclasses.replace(run_result(
            pcfg, info, paper="onemps", method=preset, report=float_report,
            metrics={"tau": tau}, wall_time_s={"supernet": summary["wall_time_s"]},
            extra={"p_value": p_value, "architectures": len(archs), "standalone_top1": standalone,
                   "supernet_top1": accs, "counts_of": "the float network the architectures come from"}),
            table_row=c.table_rows.get(preset, cfg.table_row)))
    out = {"model": cfg.model.name, "dataset": cfg.data.name, "architectures": records,
           "standalone_top1": standalone, "standalone_epochs": c.schedule.epochs, "presets": results,
           "wall_s": time.perf_counter() - t0}
    if is_main():
        atomic_write_json(root / KENDALL_FILE, out)
    return out
