"""The Pareto front in one shot (slides "Bit width probability model" and "Pareto searching time"): after ONE
supernet training, sweep eta over [eta0, eta1], take each eta's most probable architecture
argmax pi_theta(eta), evaluate every distinct child with the supernet's weights after re-estimating its
BatchNorm statistics (``core.engine.reestimate_bn_statistics`` on ``pareto.bn_images`` training images, the
child pinned), and keep the non-dominated set of (BOPs, top-1) (``core.pareto.pareto_front``).

``mpq onemps pareto RUN_DIR --points N`` writes ``RUN_DIR/pareto/candidates.json`` (every eta of the sweep,
its child's bits, BOPs and accuracy; a child met at several eta is evaluated once), ``front.json`` (the
non-dominated children, each with its policy) and ``pareto.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.data import CappedLoader
from core.engine import check_producer, evaluate, is_main, log, reestimate_bn_statistics
from core.errors import ConfigError
from core.io import atomic_write_json
from core.pareto import pareto_front
from papers.onemps.common import build_data, load_supernet_state, run_paths, setup
from papers.onemps.config import OneMpsConfig
from papers.onemps.losses import HardwareCosts
from papers.onemps.plots import plot_pareto
from papers.onemps.probability import sweep_etas
from papers.onemps.select import Child, children, unique_children
from papers.onemps.supernet import choice_bits, pin_architecture
from papers.onemps.train import build_for_training, supernet_identity

CANDIDATES_FILE, FRONT_FILE = "candidates.json", "front.json"


def evaluate_child(model: nn.Module, choice: dict[str, tuple[int, int]], train_loader: Iterable,
                   val_loader: Iterable, bn_images: int, device: torch.device,
                   max_eval_batches: int = 0) -> dict[str, float]:
    """Top-1 / top-5 / loss of the child ``choice`` with the supernet's weights: pinned, BN statistics
    re-estimated on ``bn_images`` training images (0: the supernet's running statistics), evaluated."""
    pin_architecture(model, choice)
    try:
        reestimate_bn_statistics(model, train_loader, bn_images, device)
        return evaluate(model, CappedLoader(val_loader, max_eval_batches), device, desc="child")
    finally:
        pin_architecture(model, None)


def candidate_record(model: nn.Module, costs: HardwareCosts, child: Child) -> dict[str, Any]:
    bits = choice_bits(model, child.choice)
    return {"eta": child.eta, "bops": child.bops, "avg_bits": math.sqrt(child.bops / costs.macs_total),
            "policy": {n: list(b) for n, b in bits.items()}}


def one_shot_front(model: nn.Module, costs: HardwareCosts, etas: list[float], train_loader: Iterable,
                   val_loader: Iterable, bn_images: int, device: torch.device, max_eval_batches: int = 0,
                   dedupe: bool = True) -> tuple[list[dict], list[dict]]:
    """``(candidates, front)``: one record per eta (children met earlier point to them with
    ``same_as_eta``) and the non-dominated distinct children (lower BOPs, higher top-1). ``dedupe=False``
    evaluates every eta's child even when an earlier eta gave the same one (a timing upper bound)."""
    found = children(model, costs, etas)
    evaluated: dict[tuple, dict] = {}
    for child in (unique_children(found) if dedupe else found):
        record = candidate_record(model, costs, child)
        record.update(evaluate_child(model, child.choice, train_loader, val_loader, bn_images, device,
                                     max_eval_batches))
        evaluated[child.key()] = record
        log(f"  eta {child.eta:.4g}: {record['avg_bits']:.3f} average bits, top-1 {record['top1']:.2f}")
    candidates = []
    for child in found:
        record = dict(evaluated[child.key()])
        if record["eta"] != child.eta:
            record = {**record, "same_as_eta": record["eta"], "eta": child.eta}
        candidates.append(record)
    distinct = list(evaluated.values())
    keep = pareto_front([(r["bops"], r["top1"]) for r in distinct], maximize=(False, True))
    return candidates, sorted((distinct[i] for i in keep), key=lambda r: r["bops"])


def run_pareto(cfg: OneMpsConfig) -> dict:
    """``mpq onemps pareto RUN_DIR``: the one-shot front of a trained supernet -> RUN_DIR/pareto/."""
    t0 = time.perf_counter()
    s, p = cfg.search, cfg.pareto
    if s.probability_model != "mlp":
        raise ConfigError("this run learned one logit vector per layer (a fixed-eta VIMPS / DNAS / "
                          "EdMIPS-proxy search): it holds one architecture, not a front; the one-shot front "
                          "needs search.probability_model=mlp")
    info = setup(cfg)
    paths = run_paths(cfg)
    check_producer(paths["supernet"], supernet_identity(cfg), what="supernet",
                   fix="re-run `mpq onemps train` with this config")
    data = build_data(cfg, info)
    model, costs = build_for_training(cfg, data.input_size, info.device)
    load_supernet_state(model, paths["supernet"], info.device)
    etas = sweep_etas(s.eta0, s.eta1, p.points, p.spacing)
    log(f"OneMPS pareto: {p.points} eta from {s.eta0:g} to {s.eta1:g} ({p.spacing}); BN re-estimated on "
        f"{p.bn_images} images per child")
    candidates, front = one_shot_front(model, costs, etas, data.train, data.val, p.bn_images, info.device,
                                       p.max_eval_batches)
    wall = time.perf_counter() - t0
    out = paths["pareto"]
    summary = {"points": p.points, "spacing": p.spacing, "distinct_children": len({
        c.get("same_as_eta", c["eta"]) for c in candidates}), "front_size": len(front), "pareto_wall_s": wall,
        "convention": costs.convention, "macs": costs.macs_total}
    if is_main():
        atomic_write_json(out / CANDIDATES_FILE, {**summary, "candidates": candidates})
        atomic_write_json(out / FRONT_FILE, {**summary, "front": front})
        plot_pareto(candidates, front, out / "pareto.png",
                    title=f"One-shot Pareto front: {cfg.model.name} on {cfg.data.name}")
    log(f"OneMPS pareto: {summary['distinct_children']} distinct children, {len(front)} on the front "
        f"({wall:.1f} s) -> {out}")
    return {**summary, "candidates": candidates, "front": front}
