"""The search-step benchmark (papers/edmips/perf.py) runs end to end at a tiny size."""

from __future__ import annotations

import pytest

from papers.edmips import perf


def test_search_step_times_reports_every_variant_and_ratio():
    res = perf.search_step_times(batch=2, image_size=32, rounds=2, block=1, warmup=1, modes=("eager",))
    times = res["times"]["eager"]
    assert set(times) == set(perf.VARIANTS) and all(t > 0 for t in times.values())
    ratios = res["ratios"]["eager"]
    assert ratios["search_w8/search_w4"] == pytest.approx(times["search_w8"] / times["search_w4"])
    assert set(res["first_call"]["eager"]) == set(perf.VARIANTS)


def test_saved_tensor_memory_is_flat_in_the_weight_candidates():
    """The composite weight keeps the shared weight, not one tensor per candidate (section 4.4)."""
    mem = {v: perf.saved_tensor_mb(v, batch=2, image_size=32) for v in perf.VARIANTS}
    assert mem["float"] > 0
    assert mem["search_w8"] == pytest.approx(mem["search_w4"], rel=1e-3)
    assert mem["uniform"] > mem["float"]  # the quantizers keep their inputs for the backward


def test_cpu_clock_needs_one_thread(monkeypatch):
    monkeypatch.setattr(perf.torch, "get_num_threads", lambda: 2)
    with pytest.raises(ValueError, match="one thread"):
        perf.search_step_times(batch=2, rounds=1, block=1, modes=("eager",), clock="cpu")
    monkeypatch.setattr(perf.torch, "get_num_threads", lambda: 1)
    res = perf.search_step_times(batch=2, rounds=1, block=1, warmup=1, modes=("eager",), clock="cpu",
                                 variants=("float", "uniform"))
    assert res["clock"] == "cpu" and res["times"]["eager"]["float"] > 0
