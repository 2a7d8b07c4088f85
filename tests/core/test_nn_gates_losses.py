"""core.nn.gates.gumbel_softmax, core.nn.losses.distillation_loss and core.pareto.pareto_front."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.nn import CompositeConv2d, distillation_loss, gumbel_softmax
from core.pareto import pareto_front


def test_hard_gumbel_gate_is_one_hot_and_passes_the_gradient_to_the_logits():
    logits = torch.tensor([0.2, -1.0, 1.5, 0.0], requires_grad=True)
    gate = gumbel_softmax(logits, tau=0.5, hard=True)
    assert sorted(gate.tolist()) == [0.0, 0.0, 0.0, 1.0]
    (gate * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_soft_gumbel_gate_is_the_tempered_softmax_of_perturbed_logits():
    logits = torch.randn(3, 5)
    gen = torch.Generator().manual_seed(1)
    soft = gumbel_softmax(logits, tau=0.7, generator=gen)
    noise = -torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(1)).log()
    assert torch.allclose(soft, ((logits + noise) / 0.7).softmax(-1))
    assert torch.allclose(soft.sum(-1), torch.ones(3))
    a = gumbel_softmax(logits, tau=0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, soft)  # the generator makes a draw reproducible
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax(logits, tau=0.0)


def test_gumbel_frequencies_follow_the_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([gumbel_softmax(logits, hard=True, generator=gen) for _ in range(4000)]).mean(0)
    assert torch.allclose(picks, logits.softmax(0), atol=0.03)


def test_mixed_layer_gumbel_modes_draw_the_core_gate():
    """The searchable layer's gumbel gates are core's gumbel_softmax (the same draw as torch's own)."""
    layer = CompositeConv2d(3, 4, 3, padding=1)
    layer.set_sampling("gumbel_hard", tau=0.5)
    torch.manual_seed(3)
    gate = layer.gates_w()
    torch.manual_seed(3)
    assert torch.equal(gate, gumbel_softmax(layer.alpha_w, tau=0.5, hard=True, dim=0))
    torch.manual_seed(3)
    assert torch.equal(gate, F.gumbel_softmax(layer.alpha_w, tau=0.5, hard=True, dim=0))


def test_distillation_loss_equals_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 10, generator=g, requires_grad=True)
    t = torch.randn(6, 10, generator=g, requires_grad=True)
    T = 4.0
    pt = [[math.exp(v / T) for v in row] for row in t.tolist()]
    pt = [[v / sum(row) for v in row] for row in pt]
    log_ps = [[v / T - math.log(sum(math.exp(u / T) for u in row)) for v in row] for row in s.tolist()]
    ce = sum(-sum(p * lp for p, lp in zip(pr, lr)) for pr, lr in zip(pt, log_ps)) / 6 * T * T
    kl = sum(sum(p * (math.log(p) - lp) for p, lp in zip(pr, lr)) for pr, lr in zip(pt, log_ps)) / 6 * T * T
    loss = distillation_loss(s, t, T)
    assert loss.item() == pytest.approx(ce, rel=1e-5)
    assert distillation_loss(s, t, T, form="kl").item() == pytest.approx(kl, rel=1e-5, abs=1e-6)
    assert distillation_loss(s, t, T, scale_t2=False).item() == pytest.approx(ce / T / T, rel=1e-5)
    ref = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    assert distillation_loss(s, t, T, form="kl").item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher is detached
    assert distillation_loss(t.detach(), t.detach(), 2.0, form="kl").item() == pytest.approx(0.0, abs=1e-6)


def test_pareto_front_returns_exactly_the_non_dominated_points_with_ties():
    # (BOPs: lower is better, top-1: higher is better)
    pts = [(1.0, 60.0), (2.0, 70.0), (2.0, 70.0), (2.0, 65.0), (3.0, 70.0), (0.5, 50.0), (4.0, 80.0)]
    front = pareto_front(pts, maximize=(False, True))
    assert front == [0, 1, 2, 5, 6]  # both copies of the tie are kept; (2, 65) and (3, 70) are dominated
    brute = [i for i, p in enumerate(pts) if not any(
        q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in pts)]
    assert front == brute
    assert pareto_front([(1, 1), (0, 2), (2, 0), (1, 1)]) == [0, 1, 2, 3]  # minimise both
    assert pareto_front([]) == []
    with pytest.raises(ValueError):
        pareto_front([(1, 2), (1,)])
