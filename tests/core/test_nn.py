"""Quantized, searchable (EdMIPS eq. 10-16) and switchable layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.nn import CompositeConv2d, CompositeLinear, QConv2d, QLinear
from core.quant import hwgq_mixture

torch.manual_seed(0)


@pytest.mark.parametrize("groups,bias", [(1, True), (2, False)])
def test_qconv_from_float_matches_explicit_quantized_conv(groups, bias):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
    q = QConv2d.from_float(conv, w_bits=3, a_bits=4, w_quant="gaussian", a_quant="hwgq")
    assert isinstance(q, nn.Conv2d) and torch.equal(q.weight, conv.weight)
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(q.act_quantizer(x), q.weight_quantizer(conv.weight), conv.bias, 2, 1, 1, groups)
    torch.testing.assert_close(q(x), expected)
    q.w_bits, q.a_bits = 32, 32
    assert q.weight_quantizer.bits == 32
    torch.testing.assert_close(q(x), conv(F.relu(x)))  # hwgq at 32 bits is a ReLU on the input


def test_qlinear_bits_are_settable_and_32_is_float():
    lin = nn.Linear(5, 3)
    q = QLinear.from_float(lin, w_bits=32, a_bits=32)
    x = torch.randn(4, 5)
    torch.testing.assert_close(q(x), lin(x))
    q.w_bits, q.a_bits = 2, 2
    assert not torch.allclose(q(x), lin(x))
    with pytest.raises(ConfigError):
        q.w_bits = 1  # signed LSQ needs >= 2 bits


def _explicit_sum(layer, x, op):
    """Eq. (14) expanded: sum_i sum_j pi_i^w pi_j^a op(a_j(x), Q_i(W_i))."""
    out = 0
    for i, wq in enumerate(layer.w_quantizers):
        for j, aq in enumerate(layer.a_quantizers):
            out = out + layer.pi_w()[i] * layer.pi_a()[j] * op(aq(x), wq(layer.candidate_weight(i)))
    return out


@pytest.mark.parametrize("share_weight", [True, False])
def test_composite_conv_equals_pi_weighted_parallel_convs(share_weight):
    conv = nn.Conv2d(4, 5, 3, padding=1, bias=True)
    m = CompositeConv2d.from_float(conv, share_weight=share_weight)
    with torch.no_grad():
        m.alpha_w.copy_(torch.randn(4))
        m.alpha_a.copy_(torch.randn(3))
        if not share_weight:
            m.extra_weights.add_(torch.randn_like(m.extra_weights) * 0.1)
    x = torch.randn(2, 4, 6, 6)
    op = lambda a, w: F.conv2d(a, w, None, 1, 1)  # noqa: E731
    expected = _explicit_sum(m, x, op) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=0)


def test_composite_linear_equals_pi_weighted_parallel_linears():
    m = CompositeLinear(6, 3, w_candidates=[2, 4], a_candidates=[2, 3, 4, 32])
    with torch.no_grad():
        m.alpha_w.copy_(torch.randn(2))
        m.alpha_a.copy_(torch.randn(4))
    x = torch.randn(5, 6)
    expected = _explicit_sum(m, x, lambda a, w: F.linear(a, w)) + m.bias
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=0)


def test_fused_hwgq_mixture_gradients_equal_autograd_reference():
    m = CompositeConv2d(3, 4, 3, a_candidates=[1, 2, 3, 4, 32])
    x = torch.randn(2, 3, 5, 5) * 1.5
    gates = torch.softmax(torch.randn(5), 0)
    x1, g1 = x.clone().requires_grad_(), gates.clone().requires_grad_()
    x2, g2 = x.clone().requires_grad_(), gates.clone().requires_grad_()
    y1 = m.activation_mixture(x1, g1)
    y2 = sum(g2[j] * q(x2) for j, q in enumerate(m.a_quantizers))
    grad = torch.randn_like(x)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(g1.grad, g2.grad)
    steps = [q.steps.get(q.bits, 0.0) for q in m.a_quantizers]
    assert hwgq_mixture(x, gates, steps, [1, 3, 7, 15, 0]).shape == x.shape


def test_gradients_reach_alphas_and_weights():
    m = CompositeConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6).requires_grad_()
    (m(x) ** 2).sum().backward()
    for p in (m.alpha_w, m.alpha_a, m.weight, x):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_expected_bits_eq13_and_discretize():
    m = CompositeConv2d(3, 4, 3)
    assert m.expected_w_bits().item() == pytest.approx(2.5)  # alpha init 0.01: uniform pi
    assert m.expected_a_bits().item() == pytest.approx(3.0)
    m.expected_w_bits().backward()
    assert m.alpha_w.grad is not None
    with torch.no_grad():
        m.alpha_w.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
        m.alpha_a.copy_(torch.tensor([3.0, 0.0, 0.0]))
    assert m.discretize() == (3, 2)
    pw = torch.softmax(m.alpha_w.detach(), 0)
    assert m.expected_w_bits().item() == pytest.approx((pw * torch.tensor([1.0, 2, 3, 4])).sum().item())


@pytest.mark.parametrize("mode", ["gumbel_hard", "single_path"])
def test_hard_sampling_modes_give_one_hot_gates_with_gradients(mode):
    m = CompositeConv2d(3, 4, 3, padding=1)
    m.set_sampling(mode, tau=0.5)
    gw = m.gates_w()
    assert sorted(gw.tolist()) == pytest.approx([0, 0, 0, 1])
    (m(torch.randn(2, 3, 5, 5)) ** 2).sum().backward()
    assert m.alpha_w.grad.abs().sum() > 0 and m.alpha_a.grad.abs().sum() > 0
    m.eval()
    assert torch.equal(m.gates_a(), m.gates_a())  # deterministic (argmax) in eval


def test_single_path_samples_with_probability_pi():
    m = CompositeLinear(2, 2, w_candidates=[2, 4])
    m.set_sampling("single_path")
    with torch.no_grad():
        m.alpha_w.copy_(torch.tensor([0.0, 1.0986]))  # pi = [0.25, 0.75]
    counts = torch.stack([m.gates_w().detach() for _ in range(2000)]).sum(0)
    assert counts[1].item() / 2000 == pytest.approx(0.75, abs=0.04)


def test_gumbel_soft_and_bad_mode():
    m = CompositeLinear(2, 2)
    m.set_sampling("gumbel_soft", tau=2.0)
    g = m.gates_a()
    assert g.sum().item() == pytest.approx(1.0) and (g > 0).all()
    with pytest.raises(ConfigError, match="unknown sampling mode"):
        m.set_sampling("random")
    with pytest.raises(ConfigError, match="unknown composite-layer options"):
        CompositeLinear(2, 2, bogus=1)


def test_one_convolution_per_forward():
    m = CompositeConv2d(3, 4, 3)
    calls = []
    handle = torch.nn.modules.conv.Conv2d._conv_forward
    m._conv_forward = lambda *a: calls.append(1) or handle(m, *a)
    m(torch.randn(1, 3, 5, 5))
    assert len(calls) == 1
