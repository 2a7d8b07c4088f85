"""The BOPs counter: exact MACs, each paper's convention against its published numbers, the CLI."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

from core.bops import CONVENTIONS, annotate_macs, count, expected_bops, parse_input_size
from core.errors import ConfigError, PolicyError
from core.models import build_model
from core.policy import BitPolicy, policy_layer_names
from tests.core.layer_doubles import FixedConv, MixedConv

# Published configurations (facts, typed in as constants). EdMIPS official code: indices into
# w {1,2,3,4} and a {2,3,4}, layers in module order (conv1, conv2[, conv3], downsample).
EDMIPS = {
    "resnet18": dict(
        a=[0, 0, 0, 0, 0, 0, 2, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0],
        w=[0, 0, 0, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 0, 2, 1, 3, 1, 1], avg=1.992),
    "resnet50": dict(
        a=[2, 1, 1, 2, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1,
           1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        w=[3, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2,
           1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 0, 1, 2, 2, 1, 3], avg=2.007),
}
# LIMPQ's published ResNet-50 policy (W3A4 BitOPs budget + compression 12.2) for the 52 searchable layers.
LIMPQ_R50_W = [6, 3, 4, 5, 4, 4, 5, 4, 4, 5, 4, 3, 4, 3, 3, 3, 4, 4, 3, 4, 4, 3, 4, 3, 2, 3, 2, 3, 2, 3, 3, 2,
               2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
LIMPQ_R50_A = [6, 4, 6, 6, 6, 3, 4, 6, 3, 4, 5, 3, 5, 5, 6, 3, 4, 5, 3, 4, 5, 3, 4, 4, 4, 6, 5, 5, 4, 5, 5, 4,
               6, 5, 3, 5, 6, 3, 5, 6, 3, 6, 4, 4, 6, 2, 6, 4, 6, 6, 4, 6]
# BP-NAS supplementary Table 1: ResNet-20 / CIFAR-10 per-block (w, a) for blocks 1..9; first conv W8A8.
BPNAS_R20 = {
    3.0: [(3, 3), (3, 3), (3, 3), (3, 3), (2, 4), (2, 4), (3, 3), (3, 3), (3, 3)],
    3.5: [(3, 3), (2, 4), (4, 4), (4, 4), (3, 3), (2, 4), (3, 3), (3, 3), (3, 3)],
    4.0: [(6, 4), (4, 4), (4, 4), (4, 3), (3, 3), (2, 4), (3, 3), (3, 3), (3, 3)],
}


@pytest.fixture(scope="module")
def resnet50():
    return build_model("resnet50")


def searchable_names(model: nn.Module) -> list[str]:
    """Conv/linear layers without the first conv and the fc (the papers' searchable layers)."""
    return policy_layer_names(model)[1:-1]


# ---------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("name, macs", [
    ("resnet18", 1_814_073_344), ("resnet50", 4_089_184_256),
    ("mobilenet_v2", 300_774_272), ("mobilenet_v1", 568_740_352),
])
def test_exact_macs_at_224(name, macs):
    report = count(build_model(name))
    assert report.macs == macs == report.macs_all
    assert all(r.counted and r.calls == 1 for r in report.rows)


def test_resnet18_first_conv_and_fc():
    report = count(build_model("resnet18"))
    first, fc = report.rows[0], report.rows[-1]
    assert (first.name, first.role, first.macs, first.params) == ("conv1", "first", 118_013_952, 9408)
    assert (fc.name, fc.role, fc.macs) == ("fc", "last", 512_000)
    assert (fc.params, fc.weight_numel) == (513_000, 512_000)
    assert first.out_shape == [1, 64, 112, 112] and fc.in_shape == [1, 512]


def test_resnet50_fc_and_param_totals(resnet50):
    report = count(resnet50)
    assert report.rows[-1].macs == 2_048_000
    bn = sum(p.numel() for m in resnet50.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert report.params + bn == sum(p.numel() for p in resnet50.parameters()) == 25_557_032


def test_resnet20_block_params_and_flops_of_bpnas_table():
    """BP-NAS Table 1: block params 432 / 4.61e3 / 1.38e4 / 1.84e4 / 5.53e4 / 7.37e4 (option-A shortcuts)."""
    report = count(build_model("resnet20", num_classes=10), (3, 32, 32))
    params, flops = {}, {}
    for r in report.rows:
        block = "stem" if r.name == "conv1" else r.name.rsplit(".", 1)[0]
        params[block] = params.get(block, 0) + r.weight_numel
        flops[block] = flops.get(block, 0) + r.macs
    assert params.pop("fc") == 640
    assert list(params.values()) == [432] + [4_608] * 3 + [13_824] + [18_432] * 2 + [55_296] + [73_728] * 2
    assert flops["stem"] == 442_368  # 4.42e6 in the table
    assert flops["layer1.0"] == flops["layer2.1"] == flops["layer3.2"] == 4_718_592  # 4.72e6
    assert flops["layer2.0"] == flops["layer3.0"] == 3_538_944  # 3.54e6 (stride-2 blocks)


def test_groups_linear_tokens_and_repeated_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.gc = nn.Conv2d(8, 16, 1, groups=4)
            self.tok = nn.Linear(16, 4)

        def forward(self, x):
            x = self.gc(self.dw(self.dw(x)))  # dw runs twice
            return self.tok(x.flatten(2).transpose(1, 2))  # (1, 25 tokens, 16)

    report = count(Net(), (8, 5, 5))
    dw, gc, tok = report.rows
    assert (dw.macs, dw.calls, dw.groups) == (2 * 8 * 9 * 25, 2, 8)
    assert gc.macs == 2 * 16 * 25 and gc.params == 2 * 16 + 16 and gc.weight_numel == 32
    assert tok.macs == 25 * 16 * 4 and tok.in_shape == [1, 25, 16]


def test_conventions_differ_only_where_they_should():
    """Stride 2 on an 8x8 and a 7x7 map: floor, true division and input/stride^2 disagree."""
    for size, exact_hw, limpq_hw, edmips_hw in ((8, 16, 4.5 ** 2, 16), (7, 16, 16, 12.25)):
        model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Flatten(),
                              nn.Linear(4 * 16, 3))
        kernel = 2 * 4 * 9
        rows = {c: count(model, (2, size, size), convention=c).rows[1] for c in ("exact", "limpq", "edmips")}
        assert rows["exact"].macs == kernel * exact_hw
        assert rows["limpq"].macs == pytest.approx(kernel * limpq_hw)
        assert rows["edmips"].macs == pytest.approx(kernel * edmips_hw)


# ---------------------------------------------------------------------------- published numbers
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("prefix", ["edmips_", ""])
def test_edmips_published_average_bits(arch, prefix):
    model = build_model(prefix + arch)
    names = searchable_names(model)
    assert len(names) == {"resnet18": 19, "resnet50": 52}[arch]
    cfg = EDMIPS[arch]
    policy = BitPolicy.from_indices(names, cfg["w"], cfg["a"], [1, 2, 3, 4], [2, 3, 4])
    report = count(model, policy=policy, convention="edmips")
    assert round(report.avg_bits, 3) == cfg["avg"]
    assert not report.rows[0].counted and not report.rows[-1].counted
    assert (report.rows[0].w_bits, report.rows[-1].w_bits) == (32, 32)  # full precision, outside the sum
    sp = [r.macs for r in report.rows if r.counted]
    bits = [r.w_bits * r.a_bits for r in report.rows if r.counted]
    assert report.avg_bits == pytest.approx(math.sqrt(sum(s * b for s, b in zip(sp, bits)) / sum(sp)))


def test_limpq_published_resnet50_policy(resnet50):
    names = searchable_names(resnet50)
    policy = BitPolicy(dict(zip(names, zip(LIMPQ_R50_W, LIMPQ_R50_A))))
    report = count(resnet50, policy=policy, convention="limpq")
    assert round(report.size_mb(), 3) == 7.972
    assert round(report.size_mb(32), 3) == 97.286
    assert round(report.compression_ratio, 4) == 12.2029
    first, fc = report.rows[0], report.rows[-1]
    assert (first.w_bits, first.a_bits, fc.w_bits, fc.a_bits) == (8, 8, 8, 8)
    assert (first.bits_from, fc.bits_from) == ("pinned", "pinned")
    assert "pinned = bits fixed by the convention for a layer it leaves outside the totals: " \
        "conv1 (first) W8A8, fc (last) W8A8" in report.table()
    assert not first.counted and not fc.counted
    assert first.macs == pytest.approx(9408 * 112.5 ** 2)  # true division: (224 + 6 - 6 - 1) / 2 + 1
    # The W3A4 BitOPs budget holds with LIMPQ's true-division MACs (and would not with floored ones).
    budget = count(resnet50, policy=BitPolicy.uniform(names, 3, 4), convention="limpq").bops
    assert report.bops <= budget
    floored = count(resnet50, policy=policy, convention="exact", include_first=False, include_last=False)
    floored_budget = count(resnet50, policy=BitPolicy.uniform(names, 3, 4), convention="exact",
                           include_first=False, include_last=False).bops
    assert floored.bops > floored_budget


@pytest.mark.parametrize("b_max", sorted(BPNAS_R20))
def test_bpnas_resnet20_configs_meet_their_budget(b_max):
    model = build_model("resnet20", num_classes=10)
    layers = {"conv1": (8, 8)}
    blocks = iter(BPNAS_R20[b_max])
    for stage in (1, 2, 3):
        for i in range(3):
            bits = next(blocks)
            layers[f"layer{stage}.{i}.conv1"] = layers[f"layer{stage}.{i}.conv2"] = bits
    report = count(model, (3, 32, 32), policy=BitPolicy(layers), convention="bpnas")
    assert report.rows[0].w_bits == 8 and not report.rows[0].counted
    assert b_max - 0.5 < report.avg_bits <= b_max
    assert report.bops <= b_max ** 2 * report.macs  # the B_max^2 * FLOPs budget
    if b_max == 3.0:  # counting the 8-bit first conv inside the budget would break it
        inside = count(model, (3, 32, 32), policy=BitPolicy(layers), convention="bpnas", include_first=True)
        assert inside.avg_bits > 3.0


class FlexConn(nn.Module):
    """BASQ's parameter-free skip for a stride-2 block: average pool, repeat channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.pool, self.repeat = nn.AvgPool2d(2, 2), out_ch // in_ch

    def forward(self, x):
        return self.pool(x).repeat(1, self.repeat, 1, 1)


@pytest.mark.parametrize("bits, published", [(2, 6.70), (3, 15.08), (4, 26.82)])
def test_basq_bitops_resnet18(bits, published):
    """BASQ supplementary Table 5: binary BitOPs times b^2 (printed truncated to 2 decimals, in G)."""
    model = build_model("resnet18")
    for layer in (model.layer2, model.layer3, model.layer4):
        conv = layer[0].downsample[0]
        layer[0].downsample = FlexConn(conv.in_channels, conv.out_channels)
    report = count(model, convention="basq", default_bits=(bits, bits))
    assert math.floor(report.bops / 1e7) / 100 == published
    assert report.unit == "BitOPs" and not report.rows[0].counted and not report.rows[-1].counted


# ---------------------------------------------------------------------------- every convention
def tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), FixedConv(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         FixedConv(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_every_convention_is_consistent(name):
    model = tiny()
    model[1].w_bits, model[1].a_bits = 2, 4
    report = count(model, (3, 9, 9), convention=name)
    conv = CONVENTIONS[name]
    assert [r.role for r in report.rows] == ["first", "", "", "last"]
    assert [r.counted for r in report.rows] == [conv.include_first, True, True, conv.include_last]
    for r in report.rows:
        assert r.macs > 0 and r.bops == pytest.approx(r.macs * r.w_bits * r.a_bits)
    mid = report.rows[1]
    assert (mid.w_bits, mid.a_bits, mid.quantized) == (2, 4, True)
    assert report.macs == pytest.approx(sum(r.macs for r in report.rows if r.counted))
    assert report.avg_bits == pytest.approx(math.sqrt(report.bops / report.macs))
    edges = [(report.rows[0], conv.first_bits), (report.rows[-1], conv.last_bits)]
    pinned = [r.name for r, fixed in edges if fixed is not None and not r.counted]
    assert [r.name for r in report.rows if r.bits_from == "pinned"] == pinned
    assert ("pinned = bits fixed by the convention" in report.table()) == bool(pinned)
    both = count(model, (3, 9, 9), convention=name, include_first=True, include_last=True)
    assert all(r.counted for r in both.rows)
    assert "pinned" not in [r.bits_from for r in both.rows]
    json.dumps(report.to_dict())
    assert all(r.name in report.table() for r in report.rows)


def test_bits_come_from_policy_then_layer_then_default():
    model = tiny()
    model[3].w_bits, model[3].a_bits = 3, 5
    report = count(model, (3, 8, 8), default_bits=(16, 16))
    assert [(r.w_bits, r.a_bits, r.bits_from) for r in report.rows] == [
        (16, 16, "default"), (32, 32, "layer"), (3, 5, "layer"), (16, 16, "default")]
    report = count(model, (3, 8, 8), policy=BitPolicy({"1": (2, 2), "3": (4, 4)}), default_bits=(16, 16))
    assert [(r.w_bits, r.a_bits, r.bits_from) for r in report.rows] == [
        (16, 16, "default"), (2, 2, "policy"), (4, 4, "policy"), (16, 16, "default")]
    with pytest.raises(PolicyError, match="'9' is not a module"):
        count(model, (3, 8, 8), policy=BitPolicy({"9": (2, 2)}))


def test_a_policy_must_cover_every_layer_inside_the_totals():
    model = build_model("resnet20", num_classes=10)
    names = policy_layer_names(model)
    paper_style = BitPolicy.uniform(names[1:-1], 2, 2)  # first conv and fc left to the convention
    report = count(model, (3, 32, 32), policy=paper_style, convention="bpnas")
    assert report.avg_bits == 2 and report.rows[0].bits_from == "pinned"
    count(model, (3, 32, 32), policy=paper_style, include_first=False, include_last=False)
    with pytest.raises(PolicyError, match=r"leaves out 2 layer\(s\) inside the 'exact' totals of "
                       r"CifarResNet: conv1, fc; they would be counted at W32A32.*--exclude-first"):
        count(model, (3, 32, 32), policy=paper_style)
    holey = BitPolicy.uniform([n for n in names[1:-1] if n != "layer2.1.conv1"], 2, 2)
    with pytest.raises(PolicyError, match=r"leaves out 1 layer\(s\) .*: layer2.1.conv1; .* W32A32. "
                       r"Give every searchable layer its bits in the policy$"):
        count(model, (3, 32, 32), policy=holey, convention="bpnas")


def test_a_quantized_layer_missing_from_the_policy_is_an_error_a_frozen_one_is_not():
    core_nn = pytest.importorskip("core.nn")
    model = build_model("resnet20", num_classes=10)
    names = core_nn.quantize_model(model, core_nn.QuantSpec(kind="fixed", w_bits=4, a_bits=4, first="w8",
                                                            last="w8a8"))
    report = count(model, (3, 32, 32), policy=BitPolicy.uniform(names, 2, 2))  # exact: all inside
    assert [r.bits_from for r in report.rows if r.role] == ["frozen", "frozen"]
    with pytest.raises(PolicyError, match=f": {names[3]}; they would be counted at W4A4"):
        count(model, (3, 32, 32), policy=BitPolicy.uniform(names[:3] + names[4:], 2, 2))


def test_size_mb_and_compression():
    model = nn.Sequential(nn.Conv2d(1, 2 ** 10, 2 ** 5, bias=True), nn.Flatten(), nn.Linear(2 ** 10, 2 ** 10))
    report = count(model, (1, 32, 32), default_bits=(4, 8))
    weights = 2 ** 20 + 2 ** 20  # 1 Mi elements each
    assert report.weights == weights and report.params == weights + 2 * 2 ** 10
    assert report.size_mb(32) == 8.0 and report.size_mb() == 1.0 and report.compression_ratio == 8.0
    assert report.size_mb(32, include_bias=True) == pytest.approx(8.0 + 2 * 2 ** 10 * 4 / 2 ** 20)


@pytest.mark.parametrize("layer", [nn.Conv1d(3, 3, 1), nn.Conv3d(3, 3, 1), nn.ConvTranspose2d(3, 3, 2),
                                   nn.MultiheadAttention(8, 2), nn.LSTM(3, 3), nn.Bilinear(3, 3, 3)])
def test_unsupported_layer_kinds_fail_loudly(layer):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    with pytest.raises(ConfigError, match=f"is a {type(layer).__name__}, which the BOPs counter does not"):
        count(model, (3, 4, 4))


@pytest.mark.parametrize("trace", ["meta", "real"])
def test_count_leaves_the_model_as_found(trace):
    class Stateful(FixedConv):
        def forward(self, x):
            self.weight.data.add_(1.0)  # e.g. a quantizer initialising itself on the first batch
            return super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Stateful(4, 4, 1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = count(model, (3, 8, 8), trace=trace)
    assert report.meta["trace"] == trace and report.rows[1].macs == 16 * 36
    assert model.training and model[1].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "forward" not in model[2].__dict__  # the meta pass put the layer's own forward back


def test_auto_trace_falls_back_to_a_real_forward():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if bool(x.sum() > -1e30) else -x  # needs values: impossible on meta tensors

    model = nn.Sequential(nn.Conv2d(3, 4, 3), DataDependent(), nn.Flatten(), nn.Linear(4 * 36, 2))
    report = count(model, (3, 8, 8))
    assert report.meta["trace"] == "real" and report.macs == 4 * 27 * 36 + 4 * 36 * 2
    with pytest.raises(ConfigError, match="meta"):
        count(model, (3, 8, 8), trace="meta")


@pytest.mark.parametrize("name, size", [("mobilenet_v2", (3, 64, 64)), ("edmips_resnet18", (3, 64, 64)),
                                        ("resnet20", (3, 32, 32))])
def test_meta_and_real_traces_agree(name, size):
    model = build_model(name)
    meta, real = count(model, size, trace="meta"), count(model, size, trace="real")
    assert (meta.meta["trace"], real.meta["trace"]) == ("meta", "real")
    assert [(r.name, r.macs, r.in_shape, r.out_shape) for r in meta.rows] == \
        [(r.name, r.macs, r.in_shape, r.out_shape) for r in real.rows]


def test_bad_input_size_is_a_config_error():
    with pytest.raises(ConfigError, match="forward pass at input size"):
        count(build_model("resnet20", num_classes=10), (5, 32, 32))
    with pytest.raises(ConfigError, match="unknown BOPs convention 'nope'"):
        count(tiny(), (3, 8, 8), convention="nope")


def test_mixed_layers_report_expected_bits_and_expected_bops_is_differentiable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MixedConv(4, 8, 3, padding=1), MixedConv(8, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="annotate_macs"):
        expected_bops(model)
    macs = annotate_macs(model, (3, 6, 6), convention="edmips")
    assert model[1].macs == macs["1"] == 4 * 8 * 9 * 36 and model[2].macs == 8 * 8 * 36
    assert not hasattr(model[0], "macs")
    with torch.no_grad():
        model[1].alpha_w.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    value = expected_bops(model)
    ew, ea = model[1].expected_w_bits(), model[1].expected_a_bits()
    manual = macs["1"] * ew * ea + macs["2"] * 2.5 * 3.0
    assert value.item() == pytest.approx(manual.item())
    value.backward()
    assert model[1].alpha_w.grad is not None and model[1].alpha_w.grad.abs().sum() > 0
    row = count(model, (3, 6, 6), convention="edmips").rows[1]
    assert row.w_bits == pytest.approx(ew.item()) and row.a_bits == pytest.approx(3.0)


@pytest.mark.parametrize("kind", ["fixed", "composite", "switchable"])
def test_core_nn_quantized_models(kind):
    """core.nn's layers: counted like their float originals, bits from the layers, state untouched."""
    core_nn = pytest.importorskip("core.nn")
    model = build_model("resnet20", num_classes=10)
    spec = core_nn.QuantSpec(kind=kind, w_bits=3, a_bits=4, first="w8", last="w8a8")
    if kind == "switchable":
        spec.w_candidates = spec.a_candidates = [2, 3, 4, 5, 6]
        spec.options["switchable_bn"] = True
    names = core_nn.quantize_model(model, spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = count(model, (3, 32, 32), convention="bpnas")
    assert report.macs_all == 40_551_040 and report.meta["trace"] == "meta"
    assert [r.name for r in report.counted_rows] == names
    assert (report.rows[-1].w_bits, report.rows[-1].a_bits) == (8, 8)
    mid = report.rows[1]
    if kind == "composite":  # expected bits under uniform pi: mean of the candidates
        assert (mid.w_bits, mid.a_bits) == pytest.approx((2.5, 3.0))
        annotate_macs(model, (3, 32, 32), convention="edmips")
        value = expected_bops(model)
        assert value.item() == pytest.approx(sum(r.macs for r in report.counted_rows) * 2.5 * 3.0, rel=1e-5)
        value.backward()
        assert model.layer1[0].conv1.alpha_w.grad is not None
    else:
        assert (mid.w_bits, mid.a_bits) == (3, 4)
    real = count(model, (3, 32, 32), convention="bpnas", trace="real")
    assert [r.macs for r in real.rows] == [r.macs for r in report.rows]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_counting_resnet50_is_fast(resnet50):
    count(resnet50)  # warm-up (first-call allocations)
    start = time.perf_counter()
    count(resnet50)
    # Data-free (meta) pass: about 0.13 s on one thread of a machine at load 8; a real forward is 0.3-1 s.
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------- CLI
def run_mpq(argv, capsys):
    from core.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_rows_and_totals(capsys, tmp_path):
    policy = tmp_path / "p.json"
    names = policy_layer_names(build_model("resnet20", num_classes=10))[1:-1]
    BitPolicy({n: (2, 4) if n == "layer1.0.conv1" else (4, 4) for n in names}).save(policy)
    code, out, _ = run_mpq(["bops", "resnet20", "--json", "--policy", str(policy),
                            "--convention", "bpnas"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["input_size"] == [3, 32, 32] and data["convention"] == "bpnas" and data["model"] == "resnet20"
    assert len(data["rows"]) == 20 and data["rows"][1]["w_bits"] == 2 and data["rows"][1]["a_bits"] == 4
    assert data["rows"][-1]["params"] == 650  # resnet20's own default: 10 classes
    assert [data["rows"][i]["bits_from"] for i in (0, 1, -1)] == ["pinned", "policy", "default"]
    assert (data["rows"][0]["w_bits"], data["meta"]["first_bits"]) == (8, [8, 8])
    assert data["totals"]["macs"] == 40_551_040 - 442_368 - 640
    assert data["totals"]["macs_all"] == 40_551_040


def test_cli_table_and_first_last_switches(capsys):
    argv = ["bops", "resnet18", "--input", "3x64x64", "--exclude-first", "--exclude-last"]
    code, out, _ = run_mpq(argv, capsys)
    assert code == 0
    assert "layer4.1.conv2" in out and "average bits: 32.0000" in out
    assert "* = inside the totals (19 of 21 rows)" in out


@pytest.mark.parametrize("argv, message", [
    (["bops", "no_such_model"], "unknown model 'no_such_model'"),
    (["bops", "resnet20", "--input", "3xax32"], "is not of the form CxHxW"),
    (["bops", "resnet20", "--policy", "/nonexistent/policy.json"], "does not exist"),
    (["bops", "efficientnet_cc_b0_4e", "--input", "3x64x64"], "'blocks.4.0.conv_pw' (CondConv2d)"),
    (["bops", "vit_tiny_patch16_224"], "activation x activation matmuls"),
])
def test_cli_errors(capsys, argv, message):
    code, _, err = run_mpq(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size("32") == (3, 32, 32)
    assert parse_input_size("1x28x28") == (1, 28, 28)
    with pytest.raises(ConfigError):
        parse_input_size("3x0x4")
