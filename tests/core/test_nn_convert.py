"""quantize_model on torchvision / custom nets; switchable BN and bit setters."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from core.errors import ConfigError, PolicyError
from core.nn import (
    CompositeConv2d,
    CompositeLinear,
    QConv2d,
    QLinear,
    QuantSpec,
    SwitchableBatchNorm2d,
    apply_bits,
    arch_parameters,
    bit_context,
    current_bits,
    quantizable_layers,
    quantize_model,
    set_bits,
    weight_parameters,
)

torch.manual_seed(0)


def _conv_linear_names(model):
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, groups=8, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_resnet18_composite_edmips_layout():
    model = torchvision.models.resnet18(num_classes=10)
    expected = _conv_linear_names(model)[1:-1]
    names = quantize_model(model, QuantSpec(kind="composite"))
    assert names == expected and len(names) == 19  # EdMIPS: 19 quantized layers, downsample included
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert all(isinstance(m, CompositeConv2d) for _, m in quantizable_layers(model))
    assert model.layer2[0].downsample[0].w_candidates == [1, 2, 3, 4]
    assert len(arch_parameters(model)) == 38
    ids = {id(p) for p in arch_parameters(model)}
    assert {id(p) for p in weight_parameters(model)}.isdisjoint(ids)
    assert len(weight_parameters(model)) + 38 == len(list(model.parameters()))
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.layer1[0].conv1.alpha_a.grad is not None


def test_mobilenet_v2_fixed_counts_and_groups():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    all_names = _conv_linear_names(model)
    names = quantize_model(model, QuantSpec(kind="fixed", w_bits=4, a_bits=4, first="w8", last="w8a8"))
    assert names == all_names[1:-1] and len(all_names) == 53
    first, last = model.features[0][0], model.classifier[1]
    assert isinstance(first, QConv2d) and first.bit_frozen and (first.w_bits, first.a_bits) == (8, 32)
    assert isinstance(last, QLinear) and last.bit_frozen and (last.w_bits, last.a_bits) == (8, 8)
    dw = model.features[1].conv[0][0]
    assert isinstance(dw, QConv2d) and dw.groups == 32
    set_bits(model, 2, 3)
    assert (first.w_bits, last.w_bits, dw.w_bits, dw.a_bits) == (8, 8, 2, 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_small_net_first_last_options():
    model = small_net()
    names = quantize_model(model, QuantSpec(first="quantize", last="quantize", w_bits=3, a_bits=3))
    assert names == ["0", "3", "6", "11"]
    model = small_net()
    assert quantize_model(model, QuantSpec(kind="composite", last="quantize")) == ["3", "6", "11"]
    assert isinstance(model[11], CompositeLinear) and type(model[0]) is nn.Conv2d
    model = small_net()
    quantize_model(model, QuantSpec(first="w8a8"))
    assert model[0].act_quantizer.signed  # the image input is signed
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, QuantSpec())
    with pytest.raises(ConfigError, match="first must be one of"):
        QuantSpec(first="int8")


def test_strict_rejects_conv_subclasses():
    class WeirdConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 1), WeirdConv(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
    with pytest.raises(ConfigError, match="WeirdConv"):
        quantize_model(model, QuantSpec())
    with pytest.warns(UserWarning, match="left in float"):
        assert quantize_model(model, QuantSpec(strict=False)) == ["2"]


def test_switchable_lsq_steps_and_bn_follow_the_layer_bits():
    model = small_net()
    spec = QuantSpec(kind="switchable", w_candidates=[6, 5, 4, 3, 2], a_candidates=[6, 5, 4, 3, 2],
                     options={"switchable_bn": True})
    names = quantize_model(model, spec)
    assert names == ["3", "6"]
    assert type(model[1]) is nn.BatchNorm2d  # follows the float first conv
    bn3, bn6 = model[4], model[7]
    assert isinstance(bn3, SwitchableBatchNorm2d) and bn3.bits == 4
    assert model[3].weight_quantizer.candidate_bits == [6, 5, 4, 3, 2]
    x = torch.randn(4, 3, 8, 8)
    set_bits(model, 2, 3)
    assert bn3.bits == 2 and bn6.bits == 2
    model(x)
    assert bn3.bns["2"].num_batches_tracked.item() == 1 and bn3.bns["4"].num_batches_tracked.item() == 0
    assert model[3].weight_quantizer.initialized.tolist() == [False, False, False, False, True]
    with bit_context(model, 6, 6):
        assert bn3.bits == 6 and model[6].a_bits == 6
        model(x)
    assert bn3.bits == 2 and current_bits(model)["3"] == (2, 3)
    assert bn3.bns["6"].num_batches_tracked.item() == 1
    apply_bits(model, {"3": (5, 4)})
    assert bn3.bits == 5 and bn6.bits == 2
    with pytest.raises(PolicyError, match="'nope'"):
        apply_bits(model, {"nope": (4, 4)})
    with pytest.raises(PolicyError, match="'3'"):
        apply_bits(model, {"3": (7, 4)})
    with pytest.raises(PolicyError, match="BatchNorm2d"):
        apply_bits(model, {"1": (4, 4)})


def test_bit_context_restores_on_error():
    model = small_net()
    quantize_model(model, QuantSpec(w_bits=4, a_bits=4))
    with pytest.raises(RuntimeError), bit_context(model, 2, 2):
        raise RuntimeError("boom")
    assert set(current_bits(model).values()) == {(4, 4)}


def test_switchable_bn_state_round_trip():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    sbn = SwitchableBatchNorm2d.from_float(bn, [2, 4])
    assert torch.equal(sbn.bns["4"].running_mean, bn.running_mean)
    other = SwitchableBatchNorm2d(3, [2, 4])
    other.load_state_dict(sbn.state_dict())
    assert torch.equal(other.bns["2"].running_mean, torch.full((3,), 0.5))
    with pytest.raises(ConfigError, match="no BatchNorm for 8 bits"):
        sbn.bits = 8


def test_timm_model_is_swapped_without_tracing():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=10).eval()
    spec = QuantSpec(kind="fixed", w_bits=2, a_bits=2, w_quant="dorefa", a_quant="pact")
    names = quantize_model(model, spec)
    assert len(names) == 19 and names[0] == "layer1.0.conv1"
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_w8_first_layer_input_quantizer_is_frozen_and_unused():
    """LLT's first conv (`w8`): 8-bit weights, float input. Its 32-bit input quantizer must hold no
    trainable parameter (DDP rejects parameters that never receive a gradient)."""
    from core.nn import QConv2d, QuantSpec, quantize_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    quantize_model(model, QuantSpec(kind="fixed", w_quant="lsq", a_quant="lsq", first="w8", last="w8a8"))
    first = model[0]
    assert isinstance(first, QConv2d) and first.w_bits == 8 and first.a_bits == 32
    assert not any(p.requires_grad for p in first.act_quantizer.parameters())
    assert all(p.requires_grad for p in first.weight_quantizer.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
