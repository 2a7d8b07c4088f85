"""The counter's dispatcher-level audit: nothing that multiplies and accumulates goes uncounted silently.

Reference numbers come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x MACs) run in
the test on the same model; models are built on the meta device, so nothing is computed.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.bops import count
from core.errors import ConfigError, CountingError
from core.models import build_model


def flop_counter_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """FlopCounterMode on a meta copy (where SDPA decomposes into the bmm it has formulas for)."""
    model = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device="meta"))
    return counter.get_total_flops() // 2


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(name).eval()


# ---------------------------------------------------------------------------- toy models
class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.spare = nn.Conv2d(4, 4, 1)  # never called
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Functional(nn.Module):
    """Weights used outside their modules' forward, as torchvision's Swin does with qkv/proj."""

    def __init__(self, conv_stride=1, matmul=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.qkv = nn.Linear(8, 24)
        self.conv_stride, self.matmul = conv_stride, matmul

    def forward(self, x):
        x = F.conv2d(x, self.conv.weight, self.conv.bias, self.conv_stride, 1)
        tokens = x.flatten(2).transpose(1, 2)
        if self.matmul:
            return tokens @ self.qkv.weight.t()
        return F.linear(tokens, self.qkv.weight, self.qkv.bias)


class Attention(nn.Module):
    def __init__(self, dim=8, sdpa=False):
        super().__init__()
        self.qkv, self.proj, self.sdpa = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), sdpa

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)  # 2 heads
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).flatten(2))


class Tokens(nn.Module):
    def __init__(self, sdpa=False):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, 16, 8))  # >= 2-D, but only added: no MACs
        self.attn = Attention(sdpa=sdpa)

    def forward(self, x):
        return self.attn(self.embed(x).flatten(2).transpose(1, 2) + self.pos)


ATTENTION_MACS = 2 * (2 * 16 * 16 * 4)  # q @ k^T and attn @ v: 2 heads, 16 tokens, head dim 4


class Experts(nn.Module):
    """A CondConv-style layer: the conv weight is a routed mix of expert weights."""

    def __init__(self):
        super().__init__()
        self.route = nn.Linear(3, 2)
        self.experts = nn.Parameter(torch.zeros(2, 4 * 3 * 3 * 3))

    def forward(self, x):
        weight = (self.route(x.mean((2, 3))) @ self.experts).view(4, 3, 3, 3)
        return F.conv2d(x, weight)


class Doubled(nn.Linear):
    def forward(self, x):
        return super().forward(x) + F.linear(x, self.weight)  # two maps: not one linear layer


class Blur(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.register_buffer("filt", torch.ones(3, 1, 3, 3) / 9)

    def forward(self, x):
        return F.conv2d(self.conv(x), self.filt, groups=3)


# ---------------------------------------------------------------------------- toy tests
def test_a_layer_that_never_runs_is_an_error():
    with pytest.raises(CountingError, match=r"1 Conv2d/Linear layer\(s\) never ran .* 3x8x8: spare\. "):
        count(Unused(), (3, 8, 8))


def test_functional_uses_of_a_layer_weight_are_counted_exactly():
    model = Functional()
    report = count(model, (3, 4, 4))
    conv, qkv = report.rows
    assert (conv.macs, conv.calls, conv.out_shape) == (8 * 27 * 16, 1, [1, 8, 4, 4])
    assert (qkv.macs, qkv.in_shape) == (16 * 8 * 24, [1, 16, 8])
    assert (conv.role, qkv.role) == ("first", "last")
    assert report.macs == flop_counter_macs(model, (3, 4, 4))
    real = count(model, (3, 4, 4), trace="real")
    assert [(r.macs, r.calls) for r in real.rows] == [(r.macs, r.calls) for r in report.rows]


@pytest.mark.parametrize("model, match", [
    (Functional(conv_stride=2), r"'\(top-level forward\)' \(Functional\): aten.convolution x1, .* on "
                                r"conv.weight"),
    (Functional(matmul=True), r"aten.mm x1, 0.00 M MACs, on qkv.weight"),
    (Experts(), r"'\(top-level forward\)' \(Experts\): aten.mm x1, aten.convolution x1, .* on experts"),
    (Blur(), r"aten.convolution x1, .* on filt"),
])
def test_weight_carrying_work_outside_the_layers_is_an_error(model, match):
    with pytest.raises(CountingError, match=match) as info:
        count(model, (3, 4, 4), matmuls="count")
    assert "weight-carrying work outside the counted Conv2d/Linear layers" in str(info.value)


def test_a_layer_doing_more_than_its_map_is_an_error():
    model = nn.Sequential(nn.Flatten(), Doubled(12, 2))
    with pytest.raises(CountingError, match=r"'1' \(Doubled\): its forward ran 48 MACs .* its shapes is 24"):
        count(model, (3, 2, 2))


@pytest.mark.parametrize("sdpa", [False, True])
@pytest.mark.parametrize("trace", ["meta", "real"])
def test_attention_matmuls_follow_the_matmul_rule(sdpa, trace):
    model = Tokens(sdpa=sdpa)
    with pytest.raises(CountingError, match=r"activation x activation matmuls .*'attn' \(Attention\): "
                       r"aten\.\S+ x[12], 0.00 M MACs\. .*matmuls='count'"):
        count(model, (3, 8, 8), trace=trace)
    counted = count(model, (3, 8, 8), trace=trace, matmuls="count", default_bits=(8, 8))
    layers = 16 * 12 * 8 + 16 * 8 * 24 + 16 * 8 * 8
    row = next(r for r in counted.rows if r.kind == "matmul")
    assert (row.name, row.macs, row.counted, row.w_bits, row.bits_from) == ("attn", ATTENTION_MACS, True, 8,
                                                                             "default")
    assert [r.name for r in counted.rows] == ["embed", "attn", "attn.qkv", "attn.proj"]
    assert counted.macs == layers + ATTENTION_MACS == flop_counter_macs(model, (3, 8, 8))
    assert counted.meta["params_outside_layers"] == 16 * 8
    assert "matmul rows = activation x activation products" in counted.table()
    excluded = count(model, (3, 8, 8), trace=trace, matmuls="exclude")
    assert excluded.macs == layers and excluded.macs_all == layers + ATTENTION_MACS


def test_cpu_sdpa_kernel_is_counted():
    """On CPU tensors SDPA runs ``_scaled_dot_product_flash_attention_for_cpu``, for which
    FlopCounterMode has no formula; the audit gives it the MACs of the meta pass's two bmm."""
    model = Tokens(sdpa=True)
    real = count(model, (3, 8, 8), trace="real", matmuls="count")
    row = next(r for r in real.rows if r.kind == "matmul")
    assert row.type == "_scaled_dot_product_flash_attention_for_cpu"
    assert real.macs == count(model, (3, 8, 8), trace="meta", matmuls="count").macs


def test_batch_folded_convolutions_count_every_image():
    class Patches(nn.Module):  # TNT-style: every patch is one image of a conv
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 2, 2))

    for convention in ("exact", "edmips", "limpq"):
        row = count(Patches(), (3, 4, 4), convention=convention, include_first=True).rows[0]
        assert (row.in_shape, row.macs) == ([4, 3, 2, 2], 4 * 12 * 4)


def test_bad_matmul_rule():
    with pytest.raises(ConfigError, match="unknown matmul rule 'sometimes'"):
        count(Tokens(), (3, 8, 8), matmuls="sometimes")


# ---------------------------------------------------------------------------- measured models
@pytest.mark.parametrize("name, layer_macs, default_error", [
    ("swin_t", 4_350_425_088, "'features.1.0.attn' (ShiftedWindowAttention): aten.bmm x2"),
    ("vit_tiny_patch16_224", 1_074_851_328, "'blocks.0.attn' (Attention): aten.bmm x2"),
    ("deit_tiny_patch16_224", 1_074_851_328, "'blocks.0.attn' (Attention): aten.bmm x2"),
    ("maxvit_t", 5_381_025_792, "(RelativePositionalMultiHeadAttention): aten.bmm x2"),
    ("levit_128s", 280_291_328, "'stages.0.blocks.0.attn' (Attention): aten.bmm x2"),
])
def test_attention_models_count_exactly_or_name_their_matmuls(name, layer_macs, default_error):
    """Swin's qkv/proj run through F.linear (2.963 G counted before the audit); ViT/DeiT (SDPA), MaxViT
    (einsum) and LeViT (matmul) attention was dropped. Conv+linear MACs are fvcore's numbers."""
    model = meta_model(name)
    with pytest.raises(CountingError, match=default_error.replace("(", r"\(").replace(")", r"\)")):
        count(model)
    report = count(model, matmuls="count")
    matmul = sum(r.macs for r in report.rows if r.kind == "matmul")
    assert report.macs == report.macs_all == flop_counter_macs(model, (3, 224, 224))
    assert report.macs - matmul == layer_macs
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert report.weights == sum(m.weight.numel() for m in layers)


def test_swin_functional_qkv_and_proj_are_counted_per_call():
    report = count(meta_model("swin_t"), matmuls="exclude")
    rows = {r.name: r for r in report.rows}
    qkv = rows["features.1.0.attn.qkv"]
    assert qkv.calls == 1 and qkv.macs == 64 * 49 * 96 * 288  # 64 windows of 7x7 tokens
    assert report.macs == 4_350_425_088


def test_condconv_is_refused_naming_its_modules():
    """timm's CondConv2d mixes expert weights with a matmul: 179.2 M of 384.5 M conv MACs were counted."""
    with pytest.raises(CountingError, match=r"'blocks.4.0.conv_pw' \(CondConv2d\): aten.mm x1, "
                       r"aten.convolution x1, 7.68 M MACs, on blocks.4.0.conv_pw.weight; .*\(18 more\)"):
        count(meta_model("efficientnet_cc_b0_4e"))


def test_swin_matches_fvcore():
    """fvcore (jit trace, real forward) splits Swin-T into conv + linear and matmul MACs."""
    fvcore_nn = pytest.importorskip("fvcore.nn", reason="fvcore not installed (pip install -e .[bench])")
    model = build_model("swin_t").eval()
    size = (3, 112, 112)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            analysis = fvcore_nn.FlopCountAnalysis(model, torch.zeros(1, *size))
            analysis.unsupported_ops_warnings(False)
            by_op = analysis.by_operator()
        finally:
            logging.disable(logging.NOTSET)
    report = count(model, size, matmuls="exclude")
    assert report.macs == by_op["conv"] + by_op["linear"]
    assert report.macs_all - report.macs == by_op["matmul"]
