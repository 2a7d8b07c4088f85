"""The registry of layer kinds: a kind registered outside core, errors, and smoke tests parametrised over
EVERY registered kind (core's, the papers', the toy one of ``toy_kind``), so a new kind is tested for free."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import pytest
import torch
from torch import nn

import papers
from core.errors import ConfigError
from core.nn import (
    CompositeConv2d,
    QConv2d,
    QuantSpec,
    arch_parameters,
    get_layer_kind,
    list_layer_kinds,
    quantizable_layers,
    quantize_model,
    register_layer_kind,
    weight_parameters,
)
from tests.core.toy_kind import TOY_KIND, PairConv2d, PairSelector

# A paper registers its kinds in papers/<name>/kinds.py (its package __init__ stays free of torch: loading
# the Paper object must not import training code), or, without such a module, when its package imports.
for _info in pkgutil.iter_modules(papers.__path__):
    _name = f"papers.{_info.name}"
    importlib.import_module(f"{_name}.kinds" if importlib.util.find_spec(f"{_name}.kinds") else _name)

KINDS = list_layer_kinds()


class Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def net() -> nn.Sequential:
    """Stem conv (float), two residual blocks, a linear head (quantized: ``last="quantize"``)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Block(8), Block(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def generic_spec(kind: str) -> QuantSpec:
    """Settings every kind must accept with its default options."""
    return QuantSpec(kind=kind, w_bits=4, a_bits=4, w_candidates=[2, 4], a_candidates=[2, 4], last="quantize")


EXPECTED_NAMES = ["3.conv1", "3.conv2", "4.conv1", "4.conv2", "7"]


def test_core_kinds_and_the_toy_kind_are_registered():
    assert {"fixed", "switchable", "composite", TOY_KIND} <= set(KINDS)
    assert get_layer_kind("composite").options == {"share_weight": True, "alpha_init": 0.01}
    assert (get_layer_kind("composite").w_quant, get_layer_kind("composite").a_quant) == ("gaussian", "hwgq")
    assert QuantSpec(kind="composite").w_quant == "gaussian" and QuantSpec().w_quant == "lsq"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_trains_and_round_trips(kind):
    layer_kind = get_layer_kind(kind)
    torch.manual_seed(0)
    model = net()
    names = quantize_model(model, generic_spec(kind))
    assert names == EXPECTED_NAMES
    layers = quantizable_layers(model)
    assert [n for n, _ in layers] == names and all(isinstance(m, layer_kind.layers) for _, m in layers)
    assert type(model[0]) is nn.Conv2d  # the first conv stays float (spec.first)
    x = torch.randn(2, 3, 6, 6)
    model(x).square().sum().backward()
    for name, m in layers:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name
    for p in arch_parameters(model):
        assert p.grad is not None and p.grad.abs().sum() > 0
    arch = {id(p) for p in arch_parameters(model)}
    assert len(arch) + len(weight_parameters(model)) == len(list(model.parameters()))
    model.eval()
    torch.manual_seed(1)
    other = net()
    quantize_model(other, generic_spec(kind))
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, generic_spec(kind))


def test_a_kind_registered_outside_core_builds_block_shared_selections():
    model = net()
    names = quantize_model(model, QuantSpec(kind=TOY_KIND, options={"pairs": [[2, 2], [2, 4], [4, 4]]}))
    assert names == EXPECTED_NAMES[:-1]  # last="float" by default
    block = model[3]
    assert isinstance(block.conv1, PairConv2d) and block.conv1.pairs == [(2, 2), (2, 4), (4, 4)]
    selector = block.conv1.selector
    assert isinstance(selector, PairSelector) and selector.alpha.shape == (3,)
    assert block.conv2.selector is selector and model[4].conv1.selector is not selector
    assert arch_parameters(model) == [selector.alpha, model[4].conv1.selector.alpha]  # one per block
    assert get_layer_kind(TOY_KIND).options["pairs"] == [[4, 4], [2, 4]]  # defaults untouched


def test_per_kind_options_replace_the_old_fields():
    model = net()
    quantize_model(model, QuantSpec(kind="composite", options={"share_weight": False, "alpha_init": 0.5}))
    conv = model[3].conv1
    assert isinstance(conv, CompositeConv2d) and not conv.share_weight and conv.alpha_w[0].item() == 0.5
    model = net()
    quantize_model(model, QuantSpec(kind="switchable", w_bits=4, a_bits=4, w_candidates=[2, 4],
                                    a_candidates=[2, 4], options={"switchable_bn": True}))
    assert type(model[3].bn1).__name__ == "SwitchableBatchNorm2d" and type(model[1]) is nn.BatchNorm2d


def test_unknown_kind_and_unknown_option_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown layer kind 'mixed'.*'composite'.*'fixed'"):
        QuantSpec(kind="mixed")
    with pytest.raises(ConfigError, match=r"unknown option.*share_weights.*composite.*share_weight"):
        QuantSpec(kind="composite", options={"share_weights": False})
    spec = QuantSpec(kind="fixed")
    spec.kind = "nope"
    with pytest.raises(ConfigError, match="registered layer kinds"):
        quantize_model(net(), spec)
    spec = QuantSpec(kind="fixed")
    spec.options["switchable_bn"] = True  # an option of another kind, set after construction
    with pytest.raises(ConfigError, match="'fixed'; valid: none"):
        quantize_model(net(), spec)


def test_registration_errors(monkeypatch):
    from core.nn import kinds

    monkeypatch.setattr(kinds, "LAYER_KINDS", dict(kinds.LAYER_KINDS))
    with pytest.raises(ConfigError, match="already registered"):
        register_layer_kind("fixed", layers=(QConv2d,))(lambda module, spec, name, ctx: module)
    with pytest.raises(ConfigError, match="non-empty tuple of nn.Module classes"):
        register_layer_kind("bad", layers=())

    @register_layer_kind("liar", layers=(QConv2d,))
    def build_liar(module, spec, name, ctx):
        return nn.Identity()

    with pytest.raises(ConfigError, match="built a Identity for '3.conv1'"):
        quantize_model(net(), QuantSpec(kind="liar"))
