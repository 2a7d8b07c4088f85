"""Convergence criteria: a frozen architecture never converges, a trained one does."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.convergence import MIN_CONFIDENCE, judge
from benchmarks.quick import Settings, _datasets
from benchmarks.recipe import seeded_builder
from core.bops import count
from core.method import SearchRequest
from core.models import build_model


def _toy_distribution_search(lr: float, steps: int = 200) -> dict:
    """A toy distribution search: per layer softmax(alpha) over 3 candidates, SGD on the expected cost
    (cheaper candidates preferred), reporting diagnostics as the contract asks."""
    torch.manual_seed(0)
    costs = torch.tensor([4.0, 9.0, 16.0])
    alphas = [torch.full((3,), 0.01, requires_grad=True) for _ in range(4)]
    opt = torch.optim.SGD(alphas, lr=lr, momentum=0.9)
    start = sum(float(torch.softmax(a.detach(), 0) @ costs) for a in alphas)
    for _ in range(steps):
        loss = sum(torch.softmax(a, 0) @ costs for a in alphas)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pis = [torch.softmax(a.detach(), 0) for a in alphas]
    return {"max_prob": [float(p.max()) for p in pis], "num_candidates": [3] * 4,
            "entropy": [float(-(p * p.log()).sum()) for p in pis],
            "expected_bops": {"start": start, "end": sum(float(p @ costs) for p in pis)}}


def test_toy_distribution_search_converges_and_its_frozen_copy_does_not() -> None:
    trained = judge(_toy_distribution_search(lr=1.0))
    assert trained.kind == "distribution" and trained.converged, trained.reason
    assert trained.numbers["exp_bops_end"] < trained.numbers["exp_bops_start"]
    frozen = judge(_toy_distribution_search(lr=0.0))
    assert frozen.converged is False and frozen.numbers["confidence"] == pytest.approx(0.0, abs=1e-6)
    assert frozen.numbers["norm_entropy"] == pytest.approx(1.0)


def _micro_request(run_dir, budget: float = 2.5, **options) -> SearchRequest:
    s = Settings.micro()
    train, val = _datasets(s)
    build = seeded_builder(lambda: build_model(s.model, num_classes=10, **s.model_kwargs), 0)
    macs = count(build(), (3, 8, 8), convention="bpnas").macs
    return SearchRequest(build, (3, 8, 8), 10, train, val, s.w_candidates, s.a_candidates, budget ** 2 * macs,
                         budget, run_dir, epochs=2, batch_size=32, options=options, log=lambda m: None)


def test_edmips_search_with_frozen_architecture_lr_is_not_converged(tmp_path) -> None:
    from papers.edmips.bench import DEFAULTS, search_once

    req = _micro_request(tmp_path, arch_lr=0.0)
    frozen = search_once(req, 0.01, {**DEFAULTS, **req.options})
    verdict = judge(frozen["diagnostics"], req.w_candidates, req.a_candidates)
    assert verdict.converged is False and verdict.numbers["confidence"] < 1e-3
    d = frozen["diagnostics"]
    assert d["expected_bops"]["start"] == pytest.approx(d["expected_bops"]["end"])
    assert all(len(m) == 2 and m[0] == pytest.approx(1 / 3) for m in d["max_prob"])
    moved = search_once(req, 0.01, {**DEFAULTS, "arch_lr": 50.0})  # a large lr moves pi within 2 epochs
    assert judge(moved["diagnostics"]).numbers["confidence"] > verdict.numbers["confidence"] + 0.2


def test_edmips_rule_matches_the_paper_total_architecture_update() -> None:
    from papers.edmips.bench import PAPER_ARCH_UPDATE, rule_arch_lr, step_schedule

    assert PAPER_ARCH_UPDATE == pytest.approx(553.0525)
    assert rule_arch_lr(25, 5005) == pytest.approx(0.01)  # the paper's own schedule gives its lr
    lr, sched = rule_arch_lr(3, 21), step_schedule(3)
    total = sum(lr * 21 * sched.gamma ** (e // sched.step_size) for e in range(3))
    assert total == pytest.approx(PAPER_ARCH_UPDATE) and lr == pytest.approx(23.73, abs=0.01)


def test_llt_with_frozen_lr_is_not_converged(tmp_path) -> None:
    from papers.llt import bench

    req = _micro_request(tmp_path, lr=0.0)
    policy = bench.search(req)
    d = policy.meta["diagnostics"]
    assert d["indicator_change"] == 0.0 and d["monotone_fraction"] == 1.0  # initial steps: monotone
    assert judge(d).converged is False
    assert policy.meta["shared_over"].startswith("llt-indicators-")
    assert policy.meta["search_cost_shared_s"] > 0
    again = bench.search(_micro_request(tmp_path, budget=3.0, lr=0.0))  # another budget: the same indicators
    assert again.meta["shared_over"] == policy.meta["shared_over"]


def test_importance_and_evolution_criteria() -> None:
    assert judge({"monotone_fraction": 1.0, "indicator_change": 0.05}).converged
    assert not judge({"monotone_fraction": 0.5, "indicator_change": 0.05}).converged
    assert not judge({"monotone_fraction": 1.0, "indicator_change": 0.0}).converged
    plateau = [50 + 30 * (1 - math.exp(-i / 3)) for i in range(40)]
    rising = [50 + i for i in range(40)]
    assert judge({"best_so_far": plateau}).converged
    assert not judge({"best_so_far": rising}).converged
    assert not judge({"best_so_far": [1, 2]}).converged  # too short to judge


def test_contract_shapes_fallback_and_missing_diagnostics() -> None:
    pairs = {"max_prob": [[0.95, 0.9], [0.9, 0.99]], "entropy": [[0.2, 0.3], [0.3, 0.05]],
             "mean_max_prob": 0.93, "expected_bops": {"start": 10.0, "end": 5.0}}  # OneMPS's shape
    v = judge(pairs, (2, 3, 4), (2, 3, 4))
    assert v.converged and v.numbers["confidence"] >= MIN_CONFIDENCE
    assert judge({**pairs, "fallback": True}).converged is False
    assert judge(None).converged is None and judge({}).kind == "none"
    assert judge({"something": 1}).kind == "unknown"
    assert judge({"max_prob": "bad"}).converged is False
