"""The published LLT ResNet-50 policy from the official indicators (reference notes, ../shared/reference).

With the released indicators, bits [6, 5, 4, 3, 2], a W3A4 BitOPs budget, compression ratio 12.2,
alpha 2, the non-monotone rule and true-division (``limpq``) MACs, the official ILP returns the policy
below (typed in from ../shared/reference/README.md and the official README), 7.972 MB, CR 12.2029.
"""

from __future__ import annotations

import pytest

from core.models import build_model
from papers.llt.complexity import layer_costs
from papers.llt.indicators import ImportanceIndicators
from papers.llt.search import SearchSettings, search_policy
from tests.papers.llt.helpers import reference_file

INDICATORS = reference_file("limpq-resnet50-indicators.json")

PUBLISHED_W = [6, 3, 4, 5, 4, 4, 5, 4, 4, 5, 4, 3, 4, 3, 3, 3, 4, 4, 3, 4, 4, 3, 4, 3, 2, 3, 2, 3, 2, 3, 3, 2,
               2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
PUBLISHED_A = [6, 4, 6, 6, 6, 3, 4, 6, 3, 4, 5, 3, 5, 5, 6, 3, 4, 5, 3, 4, 5, 3, 4, 4, 4, 6, 5, 5, 4, 5, 5, 4,
               6, 5, 3, 5, 6, 3, 5, 6, 3, 6, 4, 4, 6, 2, 6, 4, 6, 6, 4, 6]
PUBLISHED_MB = 7.972
PUBLISHED_FP_MB = 97.286
PUBLISHED_CR = 12.2029

needs_reference = pytest.mark.skipif(not INDICATORS.is_file(),
                                     reason=f"official indicators not found at {INDICATORS} (../shared is "
                                            "absent; set MPQ_REFERENCE_DIR)")


@pytest.fixture(scope="module")
def resnet50_setup():
    indicators = ImportanceIndicators.load(INDICATORS)
    model = build_model("resnet50", num_classes=1000)
    costs = layer_costs(model, indicators.names_for_model(), (3, 224, 224), "limpq")
    return indicators, model, costs


@needs_reference
@pytest.mark.parametrize("solver", ["bnb", "highs"])
def test_search_returns_the_published_policy(resnet50_setup, solver):
    indicators, model, costs = resnet50_setup
    settings = SearchSettings(alpha=2.0, bits=[6, 5, 4, 3, 2], w_bits=3, a_bits=4, compression=12.2,
                              macs="limpq", solver=solver)
    policy = search_policy(indicators, model, settings, costs=costs)
    assert list(policy.layers) == indicators.names_for_model()
    assert [w for w, _ in policy.layers.values()] == PUBLISHED_W
    assert [a for _, a in policy.layers.values()] == PUBLISHED_A
    assert round(policy.meta["size_mb"], 3) == PUBLISHED_MB
    assert round(policy.meta["fp_size_mb"], 3) == PUBLISHED_FP_MB
    assert round(policy.meta["compression_ratio"], 4) == PUBLISHED_CR
    assert policy.meta["bitops"] <= policy.meta["bitops_budget"]
    assert policy.meta["penalised_choices"] == []
    assert policy.meta["solver"] == solver


@needs_reference
def test_released_indicators_have_two_non_monotone_points(resnet50_setup):
    """The rule touches exactly two weight entries of the released file (5-bit below 6-bit)."""
    import numpy as np

    from papers.llt.ilp import apply_nonmonotone_rule

    indicators, _, _ = resnet50_setup
    names = indicators.names_for_model()
    changed = []
    for kind in ("weight", "act"):
        table = indicators.table(kind, [6, 5, 4, 3, 2])
        rows, cols = np.nonzero(apply_nonmonotone_rule(table, [6, 5, 4, 3, 2]) != table)
        changed += [(kind, names[r], [6, 5, 4, 3, 2][c]) for r, c in zip(rows, cols)]
    assert changed == [("weight", "layer4.0.downsample.0", 5), ("weight", "layer4.2.conv3", 5)]


def test_mobilenet_v1_w4a4_budget_is_the_published_9_68_gbitops():
    """Official README: MobileNetV1 W4A4, 9.68 G BitOPs = uniform W4A4 on the searchable layers plus the
    first conv and fc at W8A8, with true-division MACs on the standard MobileNetV1 (1.0, 224x224)."""
    from core.bops import count
    from papers.llt.ilp import uniform_bitops_budget

    model = build_model("mobilenet_v1", num_classes=1000)
    rows = count(model, (3, 224, 224), convention="limpq").rows
    searchable = [r.name for r in rows if r.counted]
    costs = layer_costs(model, searchable, (3, 224, 224), "limpq")
    assert len(searchable) == 26
    total = uniform_bitops_budget(costs, 4, 4) + costs.fixed_macs * 8 * 8
    assert round(total / 1e9, 2) == 9.68


@needs_reference
def test_the_published_policy_needs_true_division_macs_but_not_the_rule(resnet50_setup):
    """With floor (``exact``) MACs the optimum moves; switching the non-monotone rule off does not change
    it on these indicators (the two penalised entries are never worth taking here)."""
    indicators, model, costs = resnet50_setup
    base = dict(alpha=2.0, bits=[6, 5, 4, 3, 2], w_bits=3, a_bits=4, compression=12.2)
    exact = search_policy(indicators, model, SearchSettings(**base, macs="exact"))
    assert [w for w, _ in exact.layers.values()] != PUBLISHED_W
    no_rule = search_policy(indicators, model, SearchSettings(**base, nonmonotone_rule=False), costs=costs)
    assert [w for w, _ in no_rule.layers.values()] == PUBLISHED_W
    assert [a for _, a in no_rule.layers.values()] == PUBLISHED_A
