"""EdMIPS search: composite convolution (eq. 14-16), complexity loss (eq. 6, 12, 13), learning (sec. 4.6)."""

import pytest
import torch
import torch.nn.functional as F

from core.bops import count
from core.quant import create_quantizer
from papers.edmips.complexity import ComplexityLoss, measure_layer_costs
from papers.edmips.config import load_edmips_config
from papers.edmips.search import EdmipsSearchTrainer, build_search

TINY = ["model.name=digits_resnet", "model.kwargs={widths: [4, 8, 8], blocks: 1}", "data.name=digits"]


def _search_model(overrides=(), input_size=(3, 8, 8), num_classes=10):
    cfg = load_edmips_config(None, [*TINY, *overrides])
    return cfg, *build_search(cfg, num_classes, input_size, torch.device("cpu"))


def _randomise_alphas(layers, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in layers:
            m.alpha_w.copy_(torch.randn(m.alpha_w.shape, generator=gen))
            m.alpha_a.copy_(torch.randn(m.alpha_a.shape, generator=gen))


@pytest.mark.parametrize("shared", [True, False])
def test_composite_conv_equals_pi_weighted_parallel_convs(shared):
    """Eq. 14: one conv with W_bar (eq. 16 / 15) == sum_i pi_i sum_j pi_j conv(a_j(x), Q_i(W_i)) (eq. 10)."""
    _, model, layers, _, _ = _search_model([f"quant.shared_weight={str(shared).lower()}"])
    _randomise_alphas(layers)
    name, layer = layers[1]
    if not shared:  # make the candidate weights differ, as after unshared training
        with torch.no_grad():
            layer.extra_weights.add_(0.05 * torch.randn_like(layer.extra_weights))
    x = torch.randn(2, layer.in_channels, 6, 6)
    pi_w, pi_a = layer.pi_w().detach(), layer.pi_a().detach()
    parallel = torch.zeros(())
    for i, wb in enumerate(layer.w_candidates):
        w_i = layer.weight if (shared or i == 0) else layer.extra_weights[i - 1]
        q_w = create_quantizer("gaussian", wb)(w_i.detach())
        for j, ab in enumerate(layer.a_candidates):
            a_j = create_quantizer("hwgq", ab)(x)
            y = F.conv2d(a_j, q_w, None, layer.stride, layer.padding)
            parallel = parallel + pi_w[i] * pi_a[j] * y
    with torch.no_grad():
        composite = layer(x)
    assert composite.shape == parallel.shape
    torch.testing.assert_close(composite, parallel, rtol=1e-5, atol=1e-5)


def test_initial_complexity_of_official_resnet18_is_110_eta():
    """Uniform pi: E[w] = 2.5, E[a] = 3 and sum_l sp_l / sp_0 = 14.667 over the 19 layers -> 110.0."""
    cfg = load_edmips_config(None, [])  # edmips_resnet18, w {1,2,3,4}, a {2,3,4}, eta 0.00335
    # sp_l / sp_0 does not depend on the resolution while every map divides evenly (64 -> 2 at layer4)
    _, layers, costs, rc = build_search(cfg, 1000, (3, 64, 64), torch.device("cpu"))
    assert len(layers) == 19
    for _, m in layers:
        assert m.expected_w_bits().item() == pytest.approx(2.5)
        assert m.expected_a_bits().item() == pytest.approx(3.0)
    assert float(rc().detach()) == pytest.approx(110.0, rel=1e-6)
    assert cfg.search.eta * float(rc().detach()) == pytest.approx(110.0 * 0.00335, rel=1e-6)
    assert rc.names[0] == "layer1.0.conv1" and rc.normaliser == 64 * 64 * 9 * 16 * 16


def test_layer_costs_match_core_edmips_convention():
    _, model, layers, costs, _ = _search_model(input_size=(3, 16, 16))
    report = count(model, (3, 16, 16), convention="edmips")
    rows = {r.name: r for r in report.rows}
    for c in costs:
        assert c.macs == pytest.approx(rows[c.name].macs)
        assert c.params == rows[c.name].weight_numel


@pytest.mark.parametrize("kind", ["size", "memory"])
def test_user_defined_complexities_normalise_by_first_layer(kind):
    _, model, layers, costs, _ = _search_model()
    rc = ComplexityLoss(layers, costs, kind)
    bases = [c.params if kind == "size" else c.activations for c in costs]
    expected_bits = 2.5 if kind == "size" else 3.0
    assert float(rc().detach()) == pytest.approx(sum(bases) / bases[0] * expected_bits, rel=1e-6)


def test_gradients_reach_arch_params_from_both_terms():
    _, model, layers, _, rc = _search_model()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    ce_grads = [(m.alpha_w.grad.clone(), m.alpha_a.grad.clone()) for _, m in layers]
    assert all(gw.abs().sum() > 0 and ga.abs().sum() > 0 for gw, ga in ce_grads)
    model.zero_grad(set_to_none=True)
    rc().backward()
    for _, m in layers:
        # the complexity grows with the bits: its gradient pushes the high-bit logits down
        assert m.alpha_w.grad[-1] > 0 > m.alpha_w.grad[0]
        assert m.alpha_a.grad[-1] > 0 > m.alpha_a.grad[0]
        assert m.weight.grad is None  # R_C does not depend on W


def _tiny_loader(n_batches=6, batch=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(n_batches)]


def _run_search(eta, strategy="single_pass", epochs=2, overrides=()):
    torch.manual_seed(0)
    cfg, model, layers, costs, rc = _search_model(overrides)
    from core.engine import build_optimizer
    from core.nn import arch_parameters, weight_parameters

    opts = {"weights": build_optimizer(cfg.search.optim, weight_parameters(model)),
            "arch": build_optimizer(cfg.search.arch_optim, arch_parameters(model))}
    trainer = EdmipsSearchTrainer(model, opts, _tiny_loader(), None, epochs=epochs, device="cpu",
                                  complexity=rc, layers=layers, costs=costs, eta=eta, strategy=strategy)
    trainer.fit()
    return trainer, rc


def test_larger_eta_gives_lower_expected_bops():
    low, rc_low = _run_search(eta=0.001)
    high, rc_high = _run_search(eta=0.5)
    assert rc_high.expected_total() < rc_low.expected_total()
    assert len(high.arch_history) == 3  # epoch 0 (initial) + 2 epochs
    initial = high.arch_history[0]
    assert initial["epoch"] == 0 and initial["pi_w"][0] == pytest.approx([0.25] * 4)
    assert high.arch_history[-1]["complexity"] < initial["complexity"]


def test_alternating_updates_weights_and_architecture():
    trainer, rc = _run_search(eta=0.1, strategy="alternating", epochs=1)
    _, m = trainer.layers[0]
    assert not torch.allclose(m.pi_w().detach(), torch.full_like(m.pi_w(), 0.25))
    # two forward-backward passes per batch: the arch optimizer saw one step per batch
    assert trainer.optimizers["arch"].state[m.alpha_w]["momentum_buffer"] is not None


def test_unshared_search_runs():
    trainer, _ = _run_search(eta=0.1, epochs=1, overrides=["quant.shared_weight=false"])
    _, m = trainer.layers[0]
    assert m.extra_weights.shape[0] == len(m.w_candidates) - 1


def test_measure_layer_costs_rejects_unused_layer():
    from core.errors import ConfigError

    _, model, layers, _, _ = _search_model()
    with pytest.raises(ConfigError, match="not called"):
        measure_layer_costs(model, [*layers, ("ghost", torch.nn.Conv2d(1, 1, 1))], (3, 8, 8))


@pytest.mark.parametrize("model,a_idx,w_idx,avg_bits", [
    ("edmips_resnet18", [0, 0, 0, 0, 0, 0, 2, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0],
     [0, 0, 0, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 1], 1.992),
])
def test_published_searched_policy_has_published_average_bits(model, a_idx, w_idx, avg_bits):
    """The official ResNet-18 search result (reference notes) averages 1.992 bits in our layer order."""
    from papers.edmips.discretize import edmips_avg_bits

    cfg = load_edmips_config(None, [f"model.name={model}"])
    _, layers, costs, _ = build_search(cfg, 1000, (3, 64, 64), torch.device("cpu"))
    arch = [{"name": c.name, "macs": c.macs} for c in costs]
    bits = {c.name: ([1, 2, 3, 4][w], [2, 3, 4][a]) for c, w, a in zip(costs, w_idx, a_idx)}
    assert edmips_avg_bits(arch, bits)[1] == pytest.approx(avg_bits, abs=5e-4)
