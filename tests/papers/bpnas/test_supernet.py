"""The ``bpnas_pairs`` layer kind (block-shared pairs, sample / mixture paths) and the ``scale_clip``
quantizer (distribution reshaping)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.models import build_model
from core.nn import QConv2d, QuantSpec, arch_parameters, quantizable_layers, quantize_model
from core.quant.scale_clip import stats_frozen
from papers.bpnas.supernet import (
    PairConv2d,
    PairLinear,
    block_of,
    block_pairs,
    block_selectors,
    layer_policy,
    resample_paths,
    set_path_mode,
)

PAIRS = [[2, 4], [3, 3], [4, 3], [4, 4]]


def _supernet(paths="sample", blocks=2, **kw):  # the search's mode (the kind's default is the mixture)
    torch.manual_seed(0)
    model = build_model("digits_resnet", num_classes=10, widths=(4, 8, 8), blocks=2)
    quantize_model(model, QuantSpec(kind="bpnas_pairs", first="w8a8", last="w8a8",
                                    options={"pairs": PAIRS, "blocks": blocks, "paths": paths}, **kw))
    return model


def test_blocks_share_one_selector_and_its_logits():
    model = _supernet()
    layers = quantizable_layers(model)
    assert len(layers) == 12 and all(isinstance(m, PairConv2d) for _, m in layers)
    selectors = block_selectors(model)
    assert [s.name for s in selectors] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in (0, 1)]
    assert [s.layer_names for s in selectors][2] == ["layer2.0.conv1", "layer2.0.conv2"]
    assert model.get_submodule("layer2.0.conv1").selector is model.get_submodule("layer2.0.conv2").selector
    assert len(arch_parameters(model)) == 6 and all(p.numel() == 4 for p in arch_parameters(model))
    state = model.state_dict()  # the shared logits load back into the one parameter
    state["layer1.0.conv1.selector.alpha"] = torch.arange(4.0)
    state["layer1.0.conv2.selector.alpha"] = torch.arange(4.0)
    model.load_state_dict(state)
    assert selectors[0].alpha.tolist() == [0, 1, 2, 3]
    assert block_pairs(selectors)["layer1.0"] == (4, 4)
    policy = layer_policy(selectors, block_pairs(selectors))
    assert policy["layer1.0.conv2"] == (4, 4) and len(policy) == 12


def test_block_rules():
    assert block_of("layer1.0.conv1", 2) == "layer1.0" == block_of("layer1.0.downsample.0", 2)
    assert block_of("layer1.0.downsample.0", "parent") == "layer1.0.downsample"
    assert block_of("neck.fpn_convs.0.conv", "layer") == "neck.fpn_convs.0.conv"
    mapping = {"rpn": ["rpn_head"], "cls": ["roi_head.bbox_head.fc_cls"], "head": ["roi_head"]}
    assert block_of("rpn_head.rpn_conv", mapping) == "rpn"
    assert block_of("roi_head.bbox_head.fc_cls", mapping) == "cls"  # the longest prefix wins
    assert block_of("roi_head.bbox_head.shared_fcs.0", mapping) == "head"
    assert block_of("a.b.c", lambda n: n.split(".")[0].upper()) == "A"
    with pytest.raises(ConfigError, match="belongs to no block"):
        block_of("backbone.conv1", mapping)
    with pytest.raises(ConfigError, match="unknown block rule"):
        block_of("a.b", "grandparent")


def test_mapping_and_callable_blocks_and_linear_layers():
    """A detection-like grouping: any name -> block mapping, linears included (each block one pair)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 5))
    blocks = {"convs": ["0", "2"], "fc": ["4", "6"]}
    quantize_model(model, QuantSpec(kind="bpnas_pairs", first="quantize", last="quantize",
                                    options={"pairs": PAIRS, "blocks": blocks, "paths": "sample"},
                                    a_options={"signed": None}))
    selectors = block_selectors(model)
    assert [(s.name, s.layer_names) for s in selectors] == [("convs", ["0", "2"]), ("fc", ["4", "6"])]
    assert isinstance(model[4], PairLinear)
    x = torch.randn(2, 3, 8, 8)
    resample_paths(selectors)
    assert model(x).shape == (2, 5)
    assert bool(model[0].a_quantizers["3"].running_stat.sign_mode) is True  # signed input detected
    assert bool(model[2].a_quantizers["3"].running_stat.sign_mode) is False  # after a ReLU


def test_sample_mode_runs_exactly_the_sampled_pair():
    model = _supernet()
    layer = model.get_submodule("layer2.0.conv1")
    x = torch.randn(3, 4, 8, 8).relu()
    for k, (w, a) in enumerate(PAIRS):
        layer.selector.index = k
        fixed = QConv2d.from_float(nn.Conv2d(4, 8, 3, 2, 1, bias=False), w_bits=w, a_bits=a,
                                   w_quant="scale_clip", a_quant="scale_clip")
        fixed.weight.data.copy_(layer.weight.data)
        assert torch.equal(layer(x), fixed(x)), (w, a)
    model.train()
    torch.manual_seed(3)
    picks = [resample_paths(block_selectors(model))[0] for _ in range(200)]
    assert set(picks) == {0, 1, 2, 3}  # uniform p at init: every pair is drawn
    model.eval()
    with torch.no_grad():
        layer.selector.alpha.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    layer.selector.index = 0
    assert layer.selector.path() == 2  # evaluation runs the argmax pair


def test_mixture_is_the_p_weighted_sum_of_the_pairs_with_its_gradient():
    model = _supernet(paths="mixture")
    layer = model.get_submodule("layer3.1.conv2")
    with torch.no_grad():
        layer.selector.alpha.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    x = torch.randn(2, 8, 4, 4).relu()
    layer.train()
    with stats_frozen(layer.a_quantizers["3"]), stats_frozen(layer.a_quantizers["4"]):
        mixed = layer(x)
        p = layer.selector.probs()
        explicit = sum(p[k] * layer.pair_forward(x, k) for k in range(4))
    assert torch.allclose(mixed, explicit, atol=1e-5)
    (g1,) = torch.autograd.grad(mixed.square().sum(), layer.selector.alpha)
    (g2,) = torch.autograd.grad(explicit.square().sum(), layer.selector.alpha)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-4)
    stat = layer.a_quantizers["3"].running_stat
    assert stat is layer.a_quantizers["4"].running_stat  # one statistic per layer input
    before = int(stat.tracked)
    layer(x)
    assert int(stat.tracked) == before + 1  # updated once per forward, not once per activation bit-width
    set_path_mode(block_selectors(model), "sample")
    assert layer.selector.paths == "sample"


def test_unknown_option_and_missing_selector():
    with pytest.raises(ConfigError, match="unknown option"):
        QuantSpec(kind="bpnas_pairs", options={"pair": [[2, 2]]})
    with pytest.raises(ConfigError, match="candidate pair"):
        quantize_model(build_model("digits_resnet", num_classes=10),
                       QuantSpec(kind="bpnas_pairs", options={"pairs": [[2]]}))
    layer = PairConv2d(3, 4, 3)
    layer._init_pairs(PAIRS, "scale_clip", "scale_clip", None, None, 4, 3)
    with pytest.raises(ConfigError, match="no block selector"):
        layer(torch.randn(1, 3, 5, 5))
