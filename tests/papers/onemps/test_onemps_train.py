"""Supernet training: the penalty steers pi (larger eta, fewer expected BOPs), the temperature schedule,
initialisation of every option's quantizer, and the budget selection read off f_theta."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from core.data import build_loader
from core.errors import BudgetError
from papers.onemps.select import cheapest_choice, children, select_for_budget, unique_children
from papers.onemps.supernet import probability_model, supernet_layers
from papers.onemps.train import fit_supernet, initialise_quantizers, temperature
from tests.papers.onemps.helpers import batch, tiny_config, tiny_supernet


def _loader(n: int = 64):
    x, y = batch(n)
    return build_loader(TensorDataset(x, y), 16, train=True, workers=0, distributed=False)


def _expected_bops(model, costs, eta: float) -> float:
    with torch.no_grad():
        return costs.expected_bops(probability_model(model).probabilities(eta))


def test_temperature_schedules():
    s = tiny_config("search.tau_start=5", "search.tau_end=0.5").search
    assert temperature(s, 0, 11) == pytest.approx(5.0) and temperature(s, 10, 11) == pytest.approx(0.5)
    assert temperature(s, 5, 11) == pytest.approx(math.sqrt(2.5))  # geometric
    s.tau_schedule = "linear"
    assert temperature(s, 5, 11) == pytest.approx(2.75)
    s.tau_schedule = "constant"
    assert temperature(s, 7, 11) == 5.0


def test_larger_eta_lowers_expected_bops_after_a_few_steps():
    """VIMPS at a small and a large fixed eta, and f_theta over its range, on the same fixture data."""
    found = {}
    for eta in (0.01, 30.0):
        cfg, model, costs = tiny_supernet(f"search.eta={eta}", "search.schedule.epochs=2",
                                          "search.arch_optim.lr=0.05", preset="vimps")
        start = _expected_bops(model, costs, eta)
        fit_supernet(cfg, model, costs, _loader(), None, torch.device("cpu"), None)
        found[eta] = _expected_bops(model, costs, eta)
        assert found[eta] != start
    assert found[30.0] < found[0.01]
    cfg, model, costs = tiny_supernet("search.eta0=0.01", "search.eta1=30", "search.schedule.epochs=3",
                                      "search.arch_optim.lr=0.05")
    fit_supernet(cfg, model, costs, _loader(), None, torch.device("cpu"), None)
    assert _expected_bops(model, costs, 30.0) < _expected_bops(model, costs, 0.01)


def test_every_quantizer_is_initialised_before_training():
    _, model, _ = tiny_supernet()
    initialise_quantizers(model, batch()[0])
    for _, m in supernet_layers(model):
        assert all(bool(q.initialized.all()) for q in [*m.w_quantizers, *m.a_quantizers])
        assert m.pinned is None


def test_dnas_and_edmips_proxy_configurations_train_through_the_same_code_path():
    for preset in ("dnas", "edmips_proxy"):
        cfg, model, costs = tiny_supernet("search.eta=0.5", "search.schedule.epochs=1", preset=preset)
        summary = fit_supernet(cfg, model, costs, _loader(32), None, torch.device("cpu"), None)
        assert math.isfinite(summary["record"]["train_loss"])
        assert ("train_sampled_bops" in summary["record"]) == (preset == "dnas")
        assert "train_entropy" not in summary["record"]


def test_budget_selection_reads_the_most_expensive_child_within_the_budget():
    _, model, costs = tiny_supernet()
    etas = [0.1 * 1.5 ** i for i in range(12)]
    found = children(model, costs, etas)
    assert len(unique_children(found)) <= len(found)
    budget = sorted(c.bops for c in found)[len(found) // 2]
    child, fallback = select_for_budget(model, costs, budget, 0.1, 10.0)
    assert not fallback and child.bops <= budget
    cheapest = costs.bops(cheapest_choice(costs))
    assert cheapest == sum(m * 4 for m in costs.macs)  # every layer at W2A2
    child, fallback = select_for_budget(model, costs, cheapest * 1.0001, 0.1, 10.0)
    assert child.bops <= cheapest * 1.0001
    with pytest.raises(BudgetError, match="below the cheapest"):
        select_for_budget(model, costs, cheapest * 0.99, 0.1, 10.0)
