"""BP-NAS in the cross-method benchmark: B_max from the request, a policy within the budget, diagnostics."""

from __future__ import annotations

import pytest
import torch

from benchmarks.convergence import judge
from benchmarks.quick import Settings
from core.bops import count
from core.data import build_dataset
from core.errors import BudgetError, ConfigError
from core.method import SearchRequest
from core.models import build_model
from core.policy import BitPolicy
from papers.bpnas.bench import METHOD
from papers.bpnas.perf import PERF

NAMES = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1",
         "layer3.0.conv2"]


def _request(tmp_path, budget_bits, **options):
    def make():
        torch.manual_seed(0)
        return build_model("digits_resnet", num_classes=10, widths=(4, 8, 8), blocks=1)

    train = build_dataset("digits", split="train", image_size=8)
    macs = count(make(), (3, 8, 8), policy=BitPolicy.uniform(NAMES, 1, 1), convention="bpnas").bops
    return SearchRequest(build_model=make, input_size=(3, 8, 8), num_classes=10, train_set=train,
                         val_set=train, w_candidates=(2, 3, 4), a_candidates=(2, 3, 4),
                         budget_bops=budget_bits ** 2 * macs,
                         budget_avg_bits=budget_bits, run_dir=tmp_path, epochs=2, batch_size=32,
                         log=lambda msg: None, options={"max_steps_per_epoch": 3, **options})


def test_micro_request_gives_a_policy_within_budget_with_diagnostics(tmp_path):
    request = _request(tmp_path, Settings.micro().budgets[0])
    policy = METHOD.search(request)
    assert METHOD.name == "bpnas" and policy.names == NAMES
    report = count(request.build_model(), (3, 8, 8), policy=policy, convention="bpnas")
    assert report.bops <= request.budget_bops and policy.meta["bops"] == pytest.approx(report.bops)
    assert len(policy.meta["pairs"]) == 9 and policy.meta["b_max"] == request.budget_avg_bits
    for block in ("layer1.0", "layer2.0", "layer3.0"):  # one pair per block
        assert policy[f"{block}.conv1"] == policy[f"{block}.conv2"]
    diag = policy.meta["diagnostics"]
    assert diag["blocks"] == ["layer1.0", "layer2.0", "layer3.0"] and diag["num_candidates"] == [9, 9, 9]
    assert len(diag["max_prob"]) == len(diag["entropy"]) == 3 and all(0 < p <= 1 for p in diag["max_prob"])
    verdict = judge(diag, request.w_candidates, request.a_candidates)  # the benchmark can read them
    assert verdict.kind == "distribution" and verdict.converged is not None
    assert 0 <= verdict.numbers["confidence"] <= 1
    assert diag["expected_avg_bits_max"] < request.budget_avg_bits
    assert diag["expected_avg_bits_start"] < request.budget_avg_bits
    assert diag["arch_steps"] == 6  # two epochs of 3 steps, no warm-up (epochs // 3 = 0)


def test_budget_errors(tmp_path):
    with pytest.raises(BudgetError, match="infeasible"):  # below every block at W2A2
        METHOD.search(_request(tmp_path, 1.9))
    request = _request(tmp_path, 2.5)
    request.budget_bops *= 1.5
    with pytest.raises(BudgetError, match="disagrees"):
        METHOD.search(request)
    with pytest.raises(ConfigError, match="unknown request option"):
        METHOD.search(_request(tmp_path, 2.5, eta=1))


def test_perf_group_is_registered():
    assert set(PERF) == {"bpnas", "bpnas_det"} and all(callable(f) for f in PERF.values())
