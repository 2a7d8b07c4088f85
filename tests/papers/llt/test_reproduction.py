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
from papers.llt.search import search_policy
from papers.llt.settings import SearchSettings
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


def test_limpq_int_macs_are_the_official_hooks_counts():
    """``limpq_int``: the official search's pre-hook, ``int(H_out * W_out)`` of the true-division sizes
    times ``C_in * C_out * k^2 // groups``, computed here directly on a torchvision ResNet-50."""
    import torch
    from torch import nn

    model = build_model("resnet50", num_classes=1000)
    official: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs):
            h, w = inputs[0].shape[2:]
            (ph, pw), (dh, dw) = module.padding, module.dilation
            (kh, kw), (sh, sw) = module.kernel_size, module.stride
            area = int(((h + 2 * ph - dh * (kh - 1) - 1) / sh + 1)
                       * ((w + 2 * pw - dw * (kw - 1) - 1) / sw + 1))
            official[name] = module.in_channels * module.out_channels * area * kh * kw // module.groups
        return fn

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    names = [n for n in official if n != "conv1"]
    costs = layer_costs(model, names, (3, 224, 224), "limpq_int")
    assert costs.macs.tolist() == [float(official[n]) for n in names]
    true_division = layer_costs(model, names, (3, 224, 224), "limpq").macs
    assert (true_division != costs.macs).sum() == 6  # the stride-2 3x3 and 1x1 convs: 28.5^2, 14.5^2, 7.5^2


@needs_reference
def test_official_mac_truncation_keeps_the_published_policy_but_moves_three_layers_at_alpha_3():
    """The official hook's truncated MACs (``limpq_int``) give the published policy too; at alpha 3 with a
    W4A4 BitOPs budget and CR 12.2 they change the activation bits of three layers."""
    indicators = ImportanceIndicators.load(INDICATORS)
    model = build_model("resnet50", num_classes=1000)
    published = search_policy(indicators, model, SearchSettings(
        alpha=2.0, bits=[6, 5, 4, 3, 2], w_bits=3, a_bits=4, compression=12.2, macs="limpq_int"))
    assert [w for w, _ in published.layers.values()] == PUBLISHED_W
    assert [a for _, a in published.layers.values()] == PUBLISHED_A
    base = dict(alpha=3.0, bits=[6, 5, 4, 3, 2], w_bits=4, a_bits=4, compression=12.2)
    true_div = search_policy(indicators, model, SearchSettings(**base, macs="limpq")).layers
    truncated = search_policy(indicators, model, SearchSettings(**base, macs="limpq_int")).layers
    moved = {n: (true_div[n], truncated[n]) for n in true_div if true_div[n] != truncated[n]}
    assert moved == {"layer1.2.conv2": ((5, 3), (5, 4)), "layer2.2.conv3": ((5, 6), (5, 5)),
                     "layer2.3.conv2": ((3, 5), (3, 4))}
