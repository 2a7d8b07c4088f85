"""Amortised search costs and the pairing check."""

from __future__ import annotations

import pytest

from benchmarks.analysis import amortise, pairing_failures, shared_cost


def test_shared_work_is_charged_once_and_divided_among_its_calls() -> None:
    recs = [{"search_seconds": 30.0, "shared_cost": {"net": 28.0}},  # trained the shared network
            {"search_seconds": 1.0, "shared_cost": {"net": 28.0}},
            {"search_seconds": 5.0, "shared_cost": {}}]
    amortise(recs)
    assert [r["search_cost_seconds"] for r in recs] == pytest.approx([2.0 + 14.0, 1.0 + 14.0, 5.0])
    assert sum(r["search_cost_seconds"] for r in recs) == pytest.approx(36.0)
    assert shared_cost({"search_cost_shared_s": 3.0, "shared_over": "k"}, "d") == {"k": 3.0}
    assert shared_cost({"search_cost_shared_s": 3.0}, "default") == {"default": 3.0}
    assert shared_cost({"search_cost_shared_s": {"a": 1, "b": 2}}, "d") == {"a": 1.0, "b": 2.0}
    assert shared_cost({}, "d") == {}


def test_pairing_check_names_an_unpaired_seed() -> None:
    ok = [{"seed": 0, "init_hash": "i0", "order_hash": "o0"},
          {"seed": 0, "init_hash": "i0", "order_hash": "o0"},
          {"seed": 1, "init_hash": "i1", "order_hash": "o1"}]
    assert pairing_failures(ok) == []
    bad = ok + [{"seed": 1, "init_hash": "i1", "order_hash": "other"}]
    assert pairing_failures(bad) == ["seed 1: the trained runs are not paired (1 initialisations, 2 data "
                                     "orders across 2 runs)"]
