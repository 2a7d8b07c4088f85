"""The supernet layer kind: per-option kernels and quantizers, gates from f_theta(eta), one straight-through
path, conditional BatchNorm, pinned children, and what core (counting, policies) sees of it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.bops import count
from core.errors import ConfigError
from core.nn import QConv2d, QuantSpec, arch_parameters, quantize_model
from core.policy import policy_layer_names
from papers.onemps.common import signed_input_layers
from papers.onemps.probability import (
    BitWidthModel,
    DirectLogits,
    normalise_eta,
    sample_eta,
    sweep_etas,
)
from papers.onemps.supernet import (
    ConditionalBatchNorm2d,
    SupernetConv2d,
    _StraightThroughSelect,
    choice_bits,
    most_probable,
    pin_architecture,
    probability_model,
    supernet_layers,
)
from tests.papers.onemps.helpers import batch, tiny_supernet


def test_f_theta_output_shapes_and_eta_normalisation():
    sizes = [(3, 3), (2, 4), (3, 2)]
    m = BitWidthModel(sizes, eta0=0.1, eta1=10.0, depth=2, width=16)
    per_layer = m.logits(1.0)
    assert [(w.shape[0], a.shape[0]) for w, a in per_layer] == sizes
    assert m.raw_logits(torch.tensor([0.1, 1.0, 5.0])).shape == (3, m.num_logits) and m.num_logits == 17
    with torch.no_grad():
        probs = m.probabilities(0.3)
    assert all(float(p.sum()) == pytest.approx(1.0) for pw, pa in probs for p in (pw, pa))
    assert len(m.hidden) == 2 and m.hidden[0].weight.shape == (16, 1) and m.out.weight.shape == (17, 16)
    assert [float(t) for t in normalise_eta(torch.tensor([0.1, 1.0, 10.0]), 0.1, 10.0)] == pytest.approx(
        [0.0, 0.5, 1.0])
    assert BitWidthModel(sizes, 0.1, 10.0, depth=0).raw_logits(torch.ones(1)).shape == (1, 17)
    direct = DirectLogits(sizes)
    assert torch.equal(direct.raw_logits(torch.tensor([0.1, 9.0]))[0],
                       direct.raw_logits(torch.tensor([5.0]))[0])
    with pytest.raises(ConfigError, match="0 < eta0 < eta1"):
        BitWidthModel(sizes, eta0=1.0, eta1=1.0)


def test_eta_distributions_and_sweeps():
    g = torch.Generator().manual_seed(0)
    draws = [sample_eta(0.1, 10.0, "log_uniform", g) for _ in range(400)]
    assert 0.1 <= min(draws) and max(draws) <= 10.0
    assert 0.35 < sum(d < 1.0 for d in draws) / 400 < 0.65  # log-uniform: half below the geometric mean
    assert sum(d < 1.0 for d in [sample_eta(0.1, 10.0, "uniform", g) for _ in range(400)]) < 80
    assert sample_eta(0.1, 10.0, "fixed", fixed=3.0) == 3.0
    assert sweep_etas(1.0, 3.0, 3) == [1.0, 2.0, 3.0]
    assert sweep_etas(0.1, 10.0, 3, "log") == pytest.approx([0.1, 1.0, 10.0])
    with pytest.raises(ConfigError, match="at least 2"):
        sweep_etas(0.1, 1.0, 1)


def test_layers_hold_one_kernel_and_quantizer_per_option_and_share_one_probability_model():
    cfg, model, costs = tiny_supernet()
    layers = supernet_layers(model)
    assert [n for n, _ in layers] == costs.names and len(layers) == 6
    name, conv = layers[0]
    assert isinstance(conv, SupernetConv2d) and conv.w_candidates == [2, 4, 8]
    assert [w.shape for w in conv.extra_weights] == [conv.weight.shape] * 2  # options 1, 2; 0 is .weight
    assert [q.bits for q in conv.w_quantizers] == [2, 4, 8] and len({id(q) for q in conv.w_quantizers}) == 3
    with torch.no_grad():
        conv.extra_weights[0].add_(1.0)
    assert not torch.equal(conv.option_weight(0), conv.option_weight(1))  # not shared
    bit_model = probability_model(model)
    assert all(m.bit_model is bit_model for _, m in layers)
    assert [m.index for _, m in layers] == list(range(6))
    arch = {id(p) for p in arch_parameters(model)}
    assert arch == {id(p) for p in bit_model.parameters()}
    # first conv 8-bit weights (input as is), classifier W8A8, both frozen: outside the search
    assert isinstance(model.conv1, QConv2d) and model.conv1.w_bits == 8 and model.conv1.bit_frozen
    assert policy_layer_names(model) == costs.names


def test_conditional_batchnorm_follows_the_option_run():
    for key, n_keys in (("weight", 3), ("activation", 3), ("pair", 9)):
        cfg, model, _ = tiny_supernet(f"quant.conditional_bn={key}")
        conv = model.layer1[0].conv1
        bn = model.layer1[0].bn1
        assert isinstance(bn, ConditionalBatchNorm2d) and len(bn.bns) == n_keys
        pin_architecture(model, {n: (2, 1) for n, _ in supernet_layers(model)})
        model(batch()[0])
        assert bn.active == {"weight": 2, "activation": 1, "pair": 2 * 3 + 1}[key]
        assert conv.last_choice == (2, 1)
    _, model, _ = tiny_supernet("quant.conditional_bn=none")
    assert type(model.layer1[0].bn1) is nn.BatchNorm2d


def test_pinned_child_equals_a_fixed_quantized_layer():
    _, model, _ = tiny_supernet()
    conv = model.layer1[0].conv1
    x = torch.relu(torch.randn(4, 4, 8, 8))
    conv.pinned = (1, 2)
    conv.eval()
    fixed = QConv2d.from_float(conv, w_bits=4, a_bits=8)
    fixed.weight_quantizer, fixed.act_quantizer = conv.w_quantizers[1], conv.a_quantizers[2]
    with torch.no_grad():
        fixed.weight.copy_(conv.option_weight(1))
        torch.testing.assert_close(conv(x), fixed(x))


def test_gumbel_hard_sample_is_one_hot_and_its_gradient_reaches_theta():
    _, model, costs = tiny_supernet()
    bit_model = probability_model(model)
    bit_model.set_gates("gumbel_hard", 1.0)
    x, y = batch()
    bit_model.begin_step(1.0)
    out = model(x)
    bit_model.end_step()
    for _, m in supernet_layers(model):
        for z in m.last_gates:
            assert sorted(z.detach().tolist())[-1] == pytest.approx(1.0) and float(z.detach().sum()) == \
                pytest.approx(1.0) and int((z.detach().abs() > 1e-6).sum()) == 1
    nn.functional.cross_entropy(out, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bit_model.parameters())


def test_straight_through_select_gives_every_gate_its_gradient_from_one_path():
    """The one-path function gives the gates the gradient of sum_i z_i A_i(x) at a one-hot z (computed
    in full by autograd) while the forward runs only the selected quantizer."""
    _, model, _ = tiny_supernet()
    conv = model.layer1[0].conv1
    x = torch.relu(torch.randn(4, 4, 8, 8))
    for q in conv.a_quantizers:
        q(x)  # initialise the steps
    quants = list(conv.a_quantizers)
    g = torch.randn(4, 4, 8, 8)
    z1 = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)
    x1 = x.clone().requires_grad_(True)
    y = _StraightThroughSelect.apply(quants[1](x1), z1, 1, quants, x1)
    (y * g).sum().backward()
    z2 = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)
    x2 = x.clone().requires_grad_(True)
    full = sum(z2[i] * q(x2) for i, q in enumerate(quants))
    (full * g).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_eval_runs_the_most_probable_child_and_modes_are_checked():
    _, model, costs = tiny_supernet()
    model.eval()
    bit_model = probability_model(model)
    bit_model.eta = 2.0
    model(batch()[0])
    choice = most_probable(model, 2.0)
    assert {n: m.last_choice for n, m in supernet_layers(model)} == choice
    bits = choice_bits(model, choice)
    assert all(w in (2, 4, 8) and a in (2, 4, 8) for w, a in bits.values())
    with pytest.raises(ConfigError, match="gate mode"):
        bit_model.set_gates("hard")
    with pytest.raises(ConfigError, match="out of range"):
        pin_architecture(model, {n: (5, 0) for n in choice})


def test_core_counts_the_supernet_at_its_expected_bits():
    """core.bops sees a searchable layer (expected bits under pi_theta at the model's eta)."""
    _, model, costs = tiny_supernet()
    bit_model = probability_model(model)
    bit_model.eta = 1.0
    report = count(model, (3, 8, 8), convention="bpnas")
    rows = {r.name: r for r in report.rows}
    with torch.no_grad():
        probs = bit_model.probabilities(1.0)
    for (name, _), (pw, _) in zip(supernet_layers(model), probs):
        assert rows[name].bits_from == "expected"
        assert rows[name].w_bits == pytest.approx(float(pw @ torch.tensor([2.0, 4.0, 8.0])), rel=1e-5)
    assert report.bops == pytest.approx(costs.expected_bops(probs), rel=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())  # the meta pass left the model as it was
    model(batch()[0])


def test_signed_inputs_are_detected_where_inputs_go_negative():
    from core.models import build_model

    net = build_model("mobilenet_v2", num_classes=10)
    signed = signed_input_layers(net, (3, 32, 32))
    assert "features.0.0" in signed  # the image
    assert "features.2.conv.0.0" in signed  # 1x1 expansion after a linear bottleneck
    assert "features.2.conv.1.0" not in signed  # depthwise conv after ReLU6
    spec = QuantSpec(kind="onemps", w_candidates=[2, 4], a_candidates=[2, 4],
                     options={"signed_inputs": ["features.2.conv.0.0"]})
    quantize_model(net, spec)
    assert net.features[2].conv[0][0].a_quantizers[0].signed
    assert not net.features[2].conv[1][0].a_quantizers[0].signed


def test_supernet_step_trains_and_round_trips():
    _, model, _ = tiny_supernet()
    bit_model = probability_model(model)
    bit_model.set_gates("gumbel_hard", 1.0)
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        bit_model.begin_step(1.0)
        loss = nn.functional.cross_entropy(model(x), y)
        bit_model.end_step()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(float(loss.detach()))
    _, other, _ = tiny_supernet(seed=1)
    other.load_state_dict(model.state_dict())
    model.eval()
    other.eval()
    probability_model(other).eta = bit_model.eta
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))
