"""The loss of the slide "One-shot Mixed Precision Search" term by term, against direct computation, and the
DNAS / EdMIPS-proxy configurations reduced to their stated forms."""

from __future__ import annotations

import math

import pytest
import torch

from papers.onemps.config import PRESETS, load_onemps_config
from papers.onemps.losses import (
    HardwareCosts,
    Objective,
    boltzmann_prior,
    dnas_cost_factor,
    entropy,
    expected_cost,
    hardware_term,
    kernel_similarity,
)


def costs() -> HardwareCosts:
    return HardwareCosts(["a", "b", "c"], [1000.0, 4000.0, 500.0], [[2, 4, 8]] * 3, [[2, 4], [2, 4], [4, 8]])


def random_probs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=g).softmax(0), torch.randn(2, generator=g).softmax(0))
            for _ in range(3)]


def test_costs_are_macs_times_bits_normalised_by_the_all_highest_network():
    c = costs()
    assert c.raw[1][2, 1].item() == 4000 * 8 * 4
    assert c.normaliser == 1000 * 8 * 4 + 4000 * 8 * 4 + 500 * 8 * 8
    h = c.h()
    assert sum(float(hk.max()) for hk in h) == pytest.approx(1.0)
    assert c.bops({"a": (0, 0), "b": (1, 1), "c": (2, 0)}) == 1000 * 4 + 4000 * 16 + 500 * 32
    rt = HardwareCosts.from_dict(c.to_dict())
    assert rt.names == c.names and rt.normaliser == c.normaliser


def test_boltzmann_prior_matches_its_formula_and_sums_to_one():
    h = torch.tensor([[0.1, 0.4], [0.2, 0.8], [0.05, 0.3]])
    for eta in (0.0, 0.5, 3.0, 40.0):
        p = boltzmann_prior(h, eta)
        z = sum(math.exp(-eta * v) for v in h.flatten().tolist())
        expected = torch.tensor([[math.exp(-eta * v) / z for v in row] for row in h.tolist()])
        torch.testing.assert_close(p, expected)
        assert float(p.sum()) == pytest.approx(1.0)
    assert torch.all(boltzmann_prior(h, 0.0) == 1 / 6)  # eta = 0: uniform
    assert boltzmann_prior(h, 100.0).argmax() == h.argmin()  # large eta: the cheapest configuration


def test_hardware_term_is_sum_pi_log_p_and_minus_eta_expected_cost_up_to_a_constant():
    c, probs, eta = costs(), random_probs(), 2.5
    h = c.h()
    direct = 0.0
    log_z = 0.0
    for (pw, pa), hk in zip(probs, h):
        p = boltzmann_prior(hk, eta)
        for i in range(len(pw)):
            for j in range(len(pa)):
                direct += float(pw[i] * pa[j] * torch.log(p[i, j]))
        log_z += math.log(sum(math.exp(-eta * v) for v in hk.flatten().tolist()))
    assert float(hardware_term(probs, h, eta)) == pytest.approx(direct, rel=1e-5)
    assert float(hardware_term(probs, h, eta)) == pytest.approx(
        -eta * float(expected_cost(probs, h)) - log_z, rel=1e-5)
    # E[h] = sum_k E[b^w] E[b^x] MACs_k / normaliser (the slide's EdMIPS form)
    ew = [float(pw @ torch.tensor([2.0, 4.0, 8.0])) for pw, _ in probs]
    ea = [float(pa @ torch.tensor(a, dtype=torch.float32)) for (_, pa), a in zip(probs, c.a_candidates)]
    edmips = sum(w * a * m for w, a, m in zip(ew, ea, c.macs)) / c.normaliser
    assert float(expected_cost(probs, h)) == pytest.approx(edmips, rel=1e-5)


def test_entropy_matches_direct_computation_over_the_pairs():
    probs = random_probs(1)
    direct = -sum(float(pw[i] * pa[j] * torch.log(pw[i] * pa[j])) for pw, pa in probs
                  for i in range(len(pw)) for j in range(len(pa)))
    assert float(entropy(probs)) == pytest.approx(direct, rel=1e-5)
    split = sum(float(-(p * p.log()).sum()) for pw, pa in probs for p in (pw, pa))
    assert float(entropy(probs)) == pytest.approx(split, rel=1e-5)  # independent w / x: H = H(w) + H(x)


def test_kernel_similarity_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    layers = [[torch.randn(4, 3, 3, 3, generator=g) for _ in range(3)], [torch.randn(5, 2, generator=g)] * 2]
    direct = sum(float(torch.linalg.vector_norm(ws[i] - ws[j])) for ws in layers
                 for i in range(len(ws)) for j in range(i + 1, len(ws)))
    assert float(kernel_similarity(layers)) == pytest.approx(direct, rel=1e-5)
    same = torch.ones(3, requires_grad=True)
    kernel_similarity([[same, same * 1.0]]).backward()
    assert torch.isfinite(same.grad).all()  # identical kernels (the start of training): no NaN gradient


def _logits(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=g, requires_grad=True), torch.randn(2, generator=g, requires_grad=True))
            for _ in range(3)]


def test_onemps_objective_is_ce_minus_prior_minus_lambda_entropy_plus_mu_kernel_similarity():
    c, logits, eta = costs(), _logits(), 1.5
    kernels = [[torch.randn(2, 2), torch.randn(2, 2)]]
    ce = torch.tensor(0.7)
    loss, terms = Objective(c, "boltzmann", entropy_weight=0.1, kernel_weight=0.01)(ce, logits, eta, kernels)
    probs = [(a.softmax(0), b.softmax(0)) for a, b in logits]
    expected = (0.7 - hardware_term(probs, c.h(), eta) - 0.1 * entropy(probs)
                + 0.01 * kernel_similarity(kernels))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert set(terms) >= {"ce", "prior", "entropy", "kernel_similarity", "expected_cost", "loss"}


def test_edmips_proxy_configuration_reduces_to_ce_plus_eta_expected_cost():
    """EdMIPS proxy: no entropy, the Boltzmann prior term = eta sum_k E[b^w] E[b^x] MACs_k + const, so the
    gradient w.r.t. the logits is that of CE + eta E[h]."""
    cfg = load_onemps_config(None, ["search.eta=2.0"], "edmips_proxy")
    search = cfg.search
    assert (search.gates, search.entropy_weight, search.hardware_loss) == ("softmax", 0.0, "boltzmann")
    assert (cfg.search.probability_model, cfg.search.eta_distribution) == ("direct", "fixed")
    c, eta = costs(), cfg.search.eta
    objective = Objective(c, cfg.search.hardware_loss, cfg.search.entropy_weight)
    a, b = _logits(), _logits()
    ce = torch.tensor(0.3)
    loss, terms = objective(ce, a, eta)
    loss.backward()
    proxy = ce + eta * expected_cost([(x.softmax(0), y.softmax(0)) for x, y in b], c.h())
    proxy.backward()
    assert "entropy" not in terms
    for (x1, y1), (x2, y2) in zip(a, b):
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(y1.grad, y2.grad)


def test_dnas_configuration_reduces_to_ce_times_beta_log_cost_power_gamma():
    cfg = load_onemps_config(None, ["search.dnas_beta=0.2", "search.dnas_gamma=0.6"], "dnas")
    assert (cfg.search.gates, cfg.search.entropy_weight, cfg.search.hardware_loss) == (
        "gumbel_soft", 0.0, "multiplicative")
    c = costs()
    logits = _logits()
    gates = [(torch.nn.functional.gumbel_softmax(x, tau=1.0), torch.nn.functional.gumbel_softmax(y, tau=1.0))
             for x, y in logits]
    objective = Objective(c, cfg.search.hardware_loss, cfg.search.entropy_weight, 0.0, cfg.search.dnas_gamma,
                          cfg.search.dnas_beta)
    ce = torch.tensor(0.9)
    loss, terms = objective(ce, logits, 123.0, gates=gates)  # eta plays no part
    cost = sum(float(zw.detach() @ r.float() @ za.detach()) for (zw, za), r in zip(gates, c.raw))
    assert float(terms["sampled_bops"]) == pytest.approx(cost, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.9 * 0.2 * math.log(cost) ** 0.6, rel=1e-5)
    assert "entropy" not in terms and "prior" not in terms
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x, _ in logits)  # through the Gumbel gates
    factor, _ = dnas_cost_factor(gates, c.raw, 0.2, 1.0)
    assert float(factor.detach()) == pytest.approx(0.2 * math.log(cost), rel=1e-5)


def test_presets_only_change_what_the_slides_list():
    base = load_onemps_config(None, [])
    for name, overrides in PRESETS.items():
        cfg = load_onemps_config(None, [], name)
        changed = {k for k in vars(cfg.search) if getattr(cfg.search, k) != getattr(base.search, k)}
        assert changed == {o.split("=")[0].split(".")[1] for o in overrides}, name
        assert cfg.quant == base.quant and cfg.search.kernel_weight == base.search.kernel_weight


def test_kernel_similarity_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(3, 4, generator=g, requires_grad=True) for _ in range(3)]
    kernel_similarity([ws]).backward()
    ref = [w.detach().clone().requires_grad_(True) for w in ws]
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    sum(torch.sqrt((ref[i] - ref[j]).square().sum() + 1e-12) for i, j in pairs).backward()
    for w, r in zip(ws, ref):
        torch.testing.assert_close(w.grad, r.grad)
