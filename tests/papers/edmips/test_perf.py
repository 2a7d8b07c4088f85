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


def test_peak_rss_of_a_fresh_process():
    mem = perf.peak_rss("search_w4", batch=2, image_size=32, steps=1)
    assert mem["variant"] == "search_w4"
    assert mem["peak_rss_mb"] >= mem["after_build_mb"] > 50  # torch alone takes more than 50 MB
