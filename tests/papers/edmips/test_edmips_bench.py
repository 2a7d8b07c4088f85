"""The benchmark adapter: a BitPolicy within the request's BOPs budget (bpnas convention)."""

import pytest
import torch

from core.bops import count
from core.data import build_dataset
from core.errors import BudgetError
from core.method import SearchRequest
from core.models import build_model
from core.policy import BitPolicy
from papers.edmips.bench import METHOD


def _request(tmp_path, budget_bits, **options):
    def make():
        torch.manual_seed(0)
        return build_model("digits_resnet", num_classes=10, widths=(4, 8, 8), blocks=1)

    train = build_dataset("digits", split="train", image_size=8)
    names = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1",
             "layer3.0.conv2"]
    macs = count(make(), (3, 8, 8), policy=BitPolicy.uniform(names, 1, 1), convention="bpnas").bops
    return SearchRequest(build_model=make, input_size=(3, 8, 8), num_classes=10, train_set=train,
                         val_set=train, w_candidates=(1, 2, 3, 4), a_candidates=(2, 3, 4),
                         budget_bops=budget_bits ** 2 * macs, budget_avg_bits=budget_bits, run_dir=tmp_path,
                         epochs=1, batch_size=32, log=lambda msg: None,
                         options={"max_steps_per_epoch": 3, **options})


@pytest.mark.slow  # two real searches: ~10-15 s on a loaded 2-core machine
def test_policy_meets_budget_and_records_the_eta_searches(tmp_path):
    request = _request(tmp_path, 2.0, max_searches=2)
    policy = METHOD.search(request)
    assert METHOD.name == "edmips"
    report = count(request.build_model(), (3, 8, 8), policy=policy, convention="bpnas")
    assert report.bops <= request.budget_bops
    assert policy.meta["bops"] == pytest.approx(report.bops)
    assert len(policy.meta["searches"]) == 2
    etas = [s["eta"] for s in policy.meta["searches"]]
    assert len(set(etas)) == 2 and all(e > 0 for e in etas)
    d = policy.meta["diagnostics"]
    assert len(d["max_prob"]) == 6 and all(len(m) == 2 for m in d["max_prob"]) and len(d["entropy"]) == 6
    assert set(d["expected_bops"]) == {"start", "end"}
    assert len(policy.meta["search_cost_shared_s"]) == 2  # one piece of shared work per eta searched
    again = METHOD.search(_request(tmp_path, 2.5, max_searches=1))  # another budget: the first eta is reused
    assert set(again.meta["search_cost_shared_s"]) <= set(policy.meta["search_cost_shared_s"])


def test_budget_below_cheapest_policy_is_rejected_before_searching(tmp_path):
    with pytest.raises(BudgetError, match="cheapest"):
        METHOD.search(_request(tmp_path, 1.2))


def test_eta_bracketing_returns_the_feasible_policy_closest_to_budget(tmp_path, monkeypatch):
    """With a search whose bits fall as eta grows, the adapter brackets eta and keeps the best feasible."""
    import papers.edmips.bench as bench

    def fake_search(request, eta, opts):
        bits = 4 if eta < 1e-3 else 3 if eta < 1e-2 else 2 if eta < 1e-1 else 1
        names = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1",
                 "layer3.0.conv2"]
        return {"key": f"fake-{eta}", "bits": {n: (bits, max(bits, 2)) for n in names}, "eta": eta,
                "arch_lr": 1.0, "diagnostics": {"max_prob": [[1.0, 1.0]] * 6}, "seconds": 0.0}

    monkeypatch.setattr(bench, "search_once", fake_search)
    request = _request(tmp_path, 2.5, max_searches=6)  # W2A2 (2.0 bits) fits, W3A3 does not
    policy = METHOD.search(request)
    assert {bits for bits in policy.layers.values()} == {(2, 2)}
    feasible = [s for s in policy.meta["searches"] if s["feasible"]]
    infeasible = [s for s in policy.meta["searches"] if not s["feasible"]]
    assert feasible and infeasible and max(s["eta"] for s in infeasible) < min(s["eta"] for s in feasible)
    assert policy.meta["diagnostics"] == {"max_prob": [[1.0, 1.0]] * 6}
