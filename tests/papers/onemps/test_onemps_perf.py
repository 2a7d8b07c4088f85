"""The OneMPS perf group (papers/onemps/perf.py) runs end to end at a tiny size."""

from __future__ import annotations

import pytest

from papers.onemps import perf


def test_step_times_report_every_variant_and_ratio():
    res = perf.step_times("resnet20", batch=2, image_size=16, rounds=1, block=1, warmup=1)
    times = res["times"]["eager"]
    assert set(times) == set(perf.STEP_VARIANTS) and all(t > 0 for t in times.values())
    assert res["ratios"]["eager"]["supernet/uniform"] == pytest.approx(times["supernet"] / times["uniform"])


@pytest.mark.slow  # a 1-epoch supernet, the sweep twice and one EdMIPS search through the registry: ~20 s
def test_front_timing_compares_with_one_edmips_search_through_the_registry():
    res = perf.front_times(epochs=1, points=3, cap=2)
    o, e = res["onemps"], res["edmips"]
    assert o["total_s"] == pytest.approx(o["train_s"] + o["sweep_s"])
    assert 1 <= o["distinct_children"] <= 3 and o["sweep_every_point_s"] > 0
    assert e["front_s"] == pytest.approx(3 * e["one_search_s"])
    assert res["ratios"]["onemps_front/one_edmips_search"] == pytest.approx(o["total_s"] / e["one_search_s"])
