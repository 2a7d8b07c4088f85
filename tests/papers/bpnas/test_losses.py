"""BP-NAS's objective: E(SN) (supp. section 1), barrier penalty (eq. 3-5), Prob-1 (eq. 6-7, Property 1),
the feasible initialisation, the guarded architecture step, and supp. Table 1 under the convention."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from core.bops import count
from core.errors import BudgetError, ConfigError
from core.models import build_model
from core.nn import QuantSpec, quantize_model
from core.policy import BitPolicy
from papers.bpnas.losses import (
    SupernetCost,
    barrier_gradient,
    barrier_penalty,
    feasible_init,
    guarded_arch_step,
    prob1_gradient,
    prob1_regularizer,
)
from papers.bpnas.supernet import TABLE1_PAIRS, BlockSelector, block_selectors
from papers.bpnas.train import POLICY_DIR

BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer3.1",
          "layer3.2"]
#: supp. Table 1, blocks 1-9 (block 0, the first conv, is at 8 bits): (w bits, a bits) per B_max.
TABLE1 = {3.0: ([3, 3, 3, 3, 2, 2, 3, 3, 3], [3, 3, 3, 3, 4, 4, 3, 3, 3]),
          3.5: ([3, 2, 4, 4, 3, 2, 3, 3, 3], [3, 4, 4, 4, 3, 4, 3, 3, 3]),
          4.0: ([6, 4, 4, 4, 3, 2, 3, 3, 3], [4, 4, 4, 3, 3, 4, 3, 3, 3])}


@pytest.fixture(scope="module")
def resnet20():
    """ResNet-20's supernet (Table 1's pairs, ResNet blocks), its selectors and E(SN)."""
    float_model = build_model("resnet20", num_classes=10)
    report = count(float_model, (3, 32, 32), convention="bpnas")
    model = build_model("resnet20", num_classes=10)
    quantize_model(model, QuantSpec(kind="bpnas_pairs", options={"blocks": 2}, first="w8a8", last="w8a8"))
    selectors = block_selectors(model)
    return model, selectors, SupernetCost.from_report(selectors, report)


def _one_hot(selectors, pairs_by_block):
    with torch.no_grad():
        for s in selectors:
            s.alpha.fill_(-50.0)
            s.alpha[s.pairs.index(tuple(pairs_by_block[s.name]))] = 50.0


# ------------------------------------------------------------------------------ E(SN), Table 1
def test_block_macs_and_params_reproduce_table1(resnet20):
    """Per block MACs (= the table's FLOPs, with the two noted errata) and weights of supp. Table 1."""
    model, selectors, cost = resnet20
    assert [s.name for s in selectors] == BLOCKS
    printed_flops = [4.72e6, 4.72e6, 4.72e6, 3.54e6, 4.72e6, 3.54e6, 4.72e6, 4.72e6, 4.72e6]
    erratum = {5: 4.72e6, 6: 3.54e6}  # blocks 6 and 7 (0-based 5, 6): the FLOPs cells look swapped
    for i, macs in enumerate(cost.block_macs):
        assert macs == pytest.approx(erratum.get(i, printed_flops[i]), abs=0.005e6)
    params = [sum(model.get_submodule(n).weight.numel() for n in s.layer_names) for s in selectors]
    assert params == [4608] * 3 + [13824, 18432, 18432, 55296, 73728, 73728]  # 4.61e3 ... 7.37e4 printed
    assert cost.flops == sum(cost.block_macs) and cost.fixed_bops == 0


@pytest.mark.parametrize("b_max", sorted(TABLE1))
def test_table1_configurations_satisfy_their_budgets(resnet20, b_max):
    """Under the implemented convention (first conv at 8 bits outside the sum, fc not counted) every
    published configuration is within its B_max, and E(SN) of its one-hot p is its average bits."""
    _, selectors, cost = resnet20
    w, a = TABLE1[b_max]
    pairs = {name: (wb, ab) for name, wb, ab in zip(BLOCKS, w, a)}
    expected = {3.0: 2.9605, 3.5: 3.1947, 4.0: 3.5438}[b_max]
    assert cost.avg_bits(pairs) == pytest.approx(expected, abs=1e-4)
    assert cost.avg_bits(pairs) <= b_max
    _one_hot(selectors, pairs)
    assert cost.value() == pytest.approx(cost.avg_bits(pairs), abs=1e-9)
    # the packaged policy file is this configuration, counted the same way by core.bops
    policy = BitPolicy.load(POLICY_DIR / f"table1_bmax{b_max:g}.json")
    assert policy.meta["blocks"] == {n: list(p) for n, p in pairs.items()} and policy.meta["b_max"] == b_max
    report = count(build_model("resnet20", num_classes=10), (3, 32, 32), policy=policy, convention="bpnas")
    assert report.avg_bits == pytest.approx(cost.avg_bits(pairs), rel=1e-12)


def test_first_conv_inside_the_sum_would_break_the_bmax3_budget(resnet20):
    """Why the first conv is outside: counted at 8 bits inside FLOPs, B_max=3's own configuration
    averages 3.061 bits."""
    _, _, cost = resnet20
    w, a = TABLE1[3.0]
    bops = sum(m * wb * ab for m, wb, ab in zip(cost.block_macs, w, a))
    first = 3 * 16 * 9 * 32 * 32
    assert math.sqrt((bops + first * 64) / (cost.flops + first)) == pytest.approx(3.061, abs=1e-3)


def test_expected_complexity_is_the_p_weighted_bops(resnet20):
    _, selectors, cost = resnet20
    torch.manual_seed(0)
    with torch.no_grad():
        for s in selectors:
            s.alpha.normal_()
    manual = sum(m * sum(float(p) * w * a for p, (w, a) in zip(torch.softmax(s.alpha.detach().double(), 0),
                                                                 s.pairs))
                 for s, m in zip(selectors, cost.block_macs))
    assert cost.value() == pytest.approx(math.sqrt(manual / cost.flops), rel=1e-12)
    assert cost.cheapest() == {n: (2, 4) for n in BLOCKS}


def test_a_counted_layer_outside_every_block_is_an_error():
    sel = BlockSelector(TABLE1_PAIRS, "b")
    sel.layer_names = ["layer1.0.conv1"]
    report = count(build_model("resnet20", num_classes=10), (3, 32, 32), convention="bpnas")
    with pytest.raises(ConfigError, match="neither searched nor given fixed bits"):
        SupernetCost.from_report([sel], report)
    fixed = {r.name: (4, 4) for r in report.counted_rows if r.name != "layer1.0.conv1"}
    cost = SupernetCost.from_report([sel], report, fixed_bits=fixed)
    assert cost.flops == pytest.approx(report.macs)
    assert cost.fixed_macs == pytest.approx(report.macs - 4718592 / 2)


# ------------------------------------------------------------------------------ eq. 3-5
@pytest.mark.parametrize("e", [1.0, 2.5, 3.4, 3.9, 3.999])
def test_barrier_gradient_matches_autograd_and_eq4(e):
    b_max, mu = 4.0, 0.3
    x = torch.tensor(e, dtype=torch.float64, requires_grad=True)
    value = barrier_penalty(x, b_max, mu)
    assert float(value.detach()) == pytest.approx(-mu * math.log(math.log(b_max + 1 - e)), rel=1e-12)
    (grad,) = torch.autograd.grad(value, x)
    assert float(grad) == pytest.approx(barrier_gradient(e, b_max, mu), rel=1e-10)
    assert float(grad) > 0  # the barrier always pushes E(SN) down inside the domain
    h = 1e-6  # and both agree with a central difference
    fd = (float(barrier_penalty(torch.tensor(e + h, dtype=torch.float64), b_max, mu))
          - float(barrier_penalty(torch.tensor(e - h, dtype=torch.float64), b_max, mu))) / (2 * h)
    assert fd == pytest.approx(float(grad), rel=1e-5)


def test_barrier_eq5_chain_rule_through_the_architecture(resnet20):
    _, selectors, cost = resnet20
    torch.manual_seed(1)
    with torch.no_grad():
        for s in selectors:
            s.alpha.normal_(std=0.3)
    for s in selectors:
        s.alpha.grad = None
    expected = cost.expected_avg_bits()
    barrier_penalty(expected, 4.5, 0.2).backward()
    e = float(expected.detach())
    for s in selectors:
        s.alpha.grad, got = None, s.alpha.grad.clone()
        (de,) = torch.autograd.grad(cost.expected_avg_bits(), s.alpha)
        assert torch.allclose(got, barrier_gradient(e, 4.5, 0.2) * de, rtol=1e-6, atol=1e-12)


def test_barrier_near_and_beyond_the_boundary():
    b_max, mu = 3.0, 0.1
    es = [2.0, 2.9, 2.99, 2.999, 2.9999, 2.99999]
    values = [float(barrier_penalty(torch.tensor(e, dtype=torch.float64), b_max, mu)) for e in es]
    grads = [barrier_gradient(e, b_max, mu) for e in es]
    assert values == sorted(values) and grads == sorted(grads)  # both grow towards the boundary
    assert values[-1] > 1.0 and grads[-1] > 0.99e4 and all(math.isfinite(v) for v in values)
    assert values[0] > 0  # between B_max + 1 - e and B_max the penalty is positive, below it negative
    assert float(barrier_penalty(torch.tensor(1.0, dtype=torch.float64), b_max, mu)) < 0
    assert float(barrier_penalty(torch.tensor(b_max + 1 - math.e, dtype=torch.float64), b_max, mu)) == \
        pytest.approx(0.0, abs=1e-12)
    for e in (b_max, b_max + 0.5):  # on and beyond: +inf, and no NaN gradient leaks into alpha
        x = torch.tensor(e, dtype=torch.float64, requires_grad=True)
        value = barrier_penalty(x, b_max, mu)
        assert math.isinf(float(value.detach())) and float(value.detach()) > 0
        (grad,) = torch.autograd.grad(value, x)
        assert float(grad) == 0.0
        assert barrier_gradient(e, b_max, mu) == math.inf


# ------------------------------------------------------------------------------ eq. 6-7, Property 1
def test_prob1_value_and_gradient_eq7():
    torch.manual_seed(0)
    blocks = [torch.softmax(torch.randn(k, dtype=torch.float64), 0).requires_grad_() for k in (2, 3, 5)]
    value = prob1_regularizer(blocks)
    plain = [p.detach() for p in blocks]
    manual = sum(math.prod(1 - float(x) for x in p) for p in plain)
    assert float(value.detach()) == pytest.approx(manual, rel=1e-12)
    grads = torch.autograd.grad(value, blocks)
    for p, g in zip(plain, grads):
        assert torch.allclose(g, prob1_gradient(p), rtol=1e-12)
        for j in range(p.numel()):  # eq. 7 written out
            others = math.prod(1 - float(p[m]) for m in range(p.numel()) if m != j)
            assert float(g[j]) == pytest.approx(-others, rel=1e-12)


def test_property1_on_small_vectors():
    """f(x) = prod (1 - x_j) on the simplex is >= 0, and 0 exactly at the vertices (one x_j = 1)."""
    for m in (2, 3, 4):
        grid = [c for c in itertools.product(range(11), repeat=m) if sum(c) == 10]
        for c in grid:
            x = torch.tensor(c, dtype=torch.float64) / 10
            f = float(prob1_regularizer([x]))
            assert f >= 0
            assert (f == 0) == (max(c) == 10)
    for x1 in torch.linspace(0, 1, 21, dtype=torch.float64):  # the supplementary's example, eq. (2)
        f = float(prob1_regularizer([torch.stack([x1, 1 - x1])]))
        assert f == pytest.approx(float(x1 * (1 - x1)), abs=1e-15)
    # through the softmax the regularizer falls as one probability approaches 1
    values = [float(prob1_regularizer([torch.softmax(torch.tensor([t, 0.0, 0.0]), 0)])) for t in (0, 1, 3, 8)]
    assert values == sorted(values, reverse=True) and values[-1] < 1e-3


# ------------------------------------------------------------------------------ feasibility
@pytest.mark.parametrize("b_max", [3.0, 3.5, 4.0])
def test_feasible_init(resnet20, b_max):
    _, selectors, cost = resnet20
    info = feasible_init(cost, b_max, margin=0.1)
    uniform = math.sqrt(sum(w * a for w, a in TABLE1_PAIRS) / len(TABLE1_PAIRS))
    assert info["uniform_avg_bits"] == pytest.approx(uniform)
    assert info["min_avg_bits"] == pytest.approx(8 ** 0.5)
    assert cost.value() < b_max
    if uniform <= b_max - 0.1:  # B_max = 4: the uniform p is feasible and kept
        assert info["lambda"] == 0 and all(float(s.alpha.detach().abs().max()) == 0 for s in selectors)
    else:  # else the maximum-entropy p at the target: cheaper pairs more likely, bigger blocks tilted more
        target = b_max - min(0.1, (b_max - 8 ** 0.5) / 2)
        assert info["expected_avg_bits"] == pytest.approx(target, abs=1e-6)
        assert info["expected_avg_bits"] <= target
        for s in selectors:
            p = s.probs().detach().tolist()
            costs = [w * a for w, a in s.pairs]
            assert all(p[i] >= p[j] for i in range(5) for j in range(5) if costs[i] < costs[j])
        big, small = selectors[0], selectors[3]  # 4.72 M vs 3.54 M MACs
        assert float(big.probs()[0].detach()) > float(small.probs()[0].detach())


def test_infeasible_budget_is_refused(resnet20):
    _, _, cost = resnet20
    with pytest.raises(BudgetError, match="infeasible.*2.8284"):
        feasible_init(cost, 2.8, margin=0.1)


def test_guarded_step_backtracks_and_rejects(resnet20):
    _, selectors, cost = resnet20
    feasible_init(cost, 3.5, margin=0.1)
    start = cost.value()
    opt = torch.optim.SGD([s.alpha for s in selectors], lr=1.0)
    for s in selectors:  # a step towards the most expensive pair that would cross the boundary
        s.alpha.grad = torch.tensor([0.0, 0.0, 0.0, 0.0, -40.0])
    info = guarded_arch_step(opt, cost, 3.5, eps=1e-3)
    assert info["backtracks"] > 0 and not info["rejected"]
    assert start < info["expected_avg_bits"] <= 3.5 - 1e-3 and cost.value() == info["expected_avg_bits"]
    before = [s.alpha.detach().clone() for s in selectors]
    info = guarded_arch_step(opt, cost, 3.5, eps=1e-3, max_backtracks=0)  # no halving allowed
    assert info["rejected"] == 1
    assert all(torch.equal(s.alpha, b) for s, b in zip(selectors, before))
