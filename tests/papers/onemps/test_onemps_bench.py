"""The benchmark methods onemps, vimps and dnas on a micro request: a valid policy within the budget with
convergence diagnostics; onemps trains ONE supernet for every budget of a comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Subset

from core.bops import count
from core.data import build_dataset
from core.errors import BudgetError
from core.method import SearchRequest
from core.models import build_model
from core.policy import BitPolicy
from papers.onemps import bench

NAMES = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1",
         "layer3.0.conv2"]


def _request(run_dir, budget_bits, shared_dir=None, **options):
    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model("digits_resnet", num_classes=10, widths=(4, 4, 8), blocks=1)

    train = Subset(build_dataset("digits", split="train", image_size=8), range(96))
    macs = count(make(), (3, 8, 8), policy=BitPolicy.uniform(NAMES, 1, 1), convention="bpnas").bops
    return SearchRequest(build_model=make, input_size=(3, 8, 8), num_classes=10, train_set=train,
                         val_set=train, w_candidates=(2, 3, 4), a_candidates=(2, 3, 4),
                         budget_bops=budget_bits ** 2 * macs, budget_avg_bits=budget_bits, run_dir=run_dir,
                         epochs=1, batch_size=16, log=lambda msg: None, shared_dir=shared_dir,
                         options={"max_steps_per_epoch": 2, **options})


def _check(request, policy):
    assert isinstance(policy, BitPolicy) and policy.names == NAMES
    assert all(w in (2, 3, 4) and a in (2, 3, 4) for w, a in policy.layers.values())
    bops = count(request.build_model(), (3, 8, 8), policy=policy, convention="bpnas").bops
    assert bops <= request.budget_bops and policy.meta["bops"] == pytest.approx(bops)
    d = policy.meta["diagnostics"]
    assert len(d["max_prob"]) == len(d["entropy"]) == len(NAMES)
    assert all(0 < p <= 1 for pair in d["max_prob"] for p in pair)
    assert set(d["expected_bops"]) == {"start", "end"}


@pytest.mark.parametrize("method", [bench.VIMPS, bench.DNAS])
def test_fixed_eta_methods_bracket_eta_to_the_budget(tmp_path, method):
    bench._TRAINED.clear()
    request = _request(tmp_path / "b3" / method.name, 3.0, shared_dir=tmp_path / "shared", max_searches=2)
    policy = method.search(request)
    _check(request, policy)
    assert policy.meta["method"] == method.name and len(policy.meta["searches"]) == 2
    assert len(policy.meta["search_cost_shared_s"]) == 2  # one shared search per eta
    again = method.search(_request(tmp_path / "b35" / method.name, 3.5, shared_dir=tmp_path / "shared",
                                   max_searches=2))
    # the next budget starts at the same eta: that search is reused (the same shared work, same result)
    first = next(iter(policy.meta["search_cost_shared_s"]))
    assert first in again.meta["search_cost_shared_s"]
    assert again.meta["searches"][0]["bops"] == policy.meta["searches"][0]["bops"]


def test_onemps_answers_every_budget_from_one_supernet(tmp_path):
    bench._TRAINED.clear()
    shared = tmp_path / "runs" / "onemps" / "seed0-shared"  # mpq bench run's layout
    policies = []
    for bits in (2.5, 3.5):
        request = _request(tmp_path / "runs" / "onemps" / f"b{bits}" / "seed0", bits, shared_dir=shared)
        policies.append(bench.METHOD.search(request))
        _check(request, policies[-1])
    first, second = (p.meta for p in policies)
    assert not first["cache_hit"] and second["cache_hit"] and first["shared_over"] == second["shared_over"]
    assert first["search_cost_shared_s"] == second["search_cost_shared_s"] > 0
    assert len(list(shared.glob("onemps-supernet-*"))) == 1
    assert policies[0].meta["bops"] <= policies[1].meta["bops"]  # a larger budget: no cheaper child
    # a new process (empty memory) resumes the finished supernet from disk: no retraining
    bench._TRAINED.clear()
    again = bench.METHOD.search(_request(tmp_path / "runs" / "onemps" / "b3.5" / "seed0", 3.5,
                                         shared_dir=shared))
    assert again.layers == policies[1].layers and not again.meta["cache_hit"]
    assert again.meta["search_cost_shared_s"] == pytest.approx(first["search_cost_shared_s"])


def test_budget_below_the_search_space_and_unknown_options(tmp_path):
    bench._TRAINED.clear()
    for method in (bench.METHOD, bench.VIMPS, bench.DNAS):
        with pytest.raises(BudgetError, match="cheapest"):
            method.search(_request(tmp_path / "a" / "b" / "c", 1.5))
    with pytest.raises(Exception, match="unknown request option"):
        bench.VIMPS.search(_request(tmp_path, 3.0, cache_dir="x"))


def test_request_config_schedule_rule_and_dnas_gamma(tmp_path):
    """The schedule rule (theta frozen for max(1, epochs // 5) epochs, none for one epoch) and DNAS's knob:
    the bracketed value is gamma, with beta keeping beta ln(max BOPs)^gamma = 1."""
    opts = bench._options(_request(tmp_path, 3.0), "dnas")
    for epochs, warmup in [(1, 0), (3, 1), (10, 2)]:
        request = _request(tmp_path, 3.0)
        request.epochs = epochs
        cfg = bench.request_config(request, "dnas", opts, 10, eta=4.0, max_bops=1e6)
        assert cfg.search.arch_warmup_epochs == warmup
        assert cfg.search.dnas_gamma == 4.0
        assert cfg.search.dnas_beta * math.log(1e6) ** 4 == pytest.approx(1)
    vimps = bench.request_config(_request(tmp_path, 3.0), "vimps", bench._options(_request(tmp_path, 3.0),
                                                                                 "vimps"), 10, eta=0.2)
    assert vimps.search.eta == 0.2
