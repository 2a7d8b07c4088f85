"""BASQ's layers: flexconn, the clip quantizer, the ``basq`` layer kind (branches, per-branch BNs and
weight decay), and the networks' counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.bops import count
from core.errors import ConfigError
from core.nn import QConv2d, QLinear, quantize_model
from papers.basq.layers import (
    LAMBDAS,
    BranchBatchNorm2d,
    BranchClipConv2d,
    clip_param_groups,
    current_selection,
    search_space,
    searchable_blocks,
    set_selection,
)
from papers.basq.models import BasqUnit, FlexConn, basq_spec, build_network
from papers.basq.quant import ClipQuantizer, official_step_fraction

SMALL_MBV2 = {"setting": [[1, 8, 1, 1], [1, 8, 1, 1], [6, 8, 2, 1], [6, 12, 1, 2]], "last_channels": 32}


# ----------------------------------------------------------------------------------------- flexconn
def test_flexconn_equal_width_is_identity():
    x = torch.randn(2, 5, 4, 4)
    assert torch.equal(FlexConn(5, 5)(x), x)


def test_flexconn_wider_repeats_the_input():
    x = torch.randn(2, 3, 4, 4)
    y = FlexConn(3, 9)(x)
    assert y.shape == (2, 9, 4, 4)
    assert all(torch.equal(y[:, 3 * i:3 * i + 3], x) for i in range(3))
    y = FlexConn(3, 7)(x)  # not a multiple: ceil(7/3) copies cut to 7 channels
    assert torch.equal(y, torch.cat([x, x, x[:, :1]], 1))


def test_flexconn_narrower_sums_chunks_and_adds_the_remainder_to_the_first_channels():
    x = torch.randn(2, 8, 3, 3)
    assert torch.allclose(FlexConn(8, 4)(x), x[:, :4] + x[:, 4:])
    y = FlexConn(8, 3)(x)  # 2 chunks of 3, remainder 2 -> channels 0 and 1
    expected = x[:, 0:3] + x[:, 3:6]
    expected[:, :2] += x[:, 6:8]
    assert y.shape == (2, 3, 3, 3) and torch.allclose(y, expected)


@pytest.mark.parametrize(("cin", "cout"), [(4, 4), (4, 8), (8, 4), (6, 4)])
def test_flexconn_stride_two_average_pools(cin, cout):
    x = torch.randn(1, cin, 6, 6)
    y = FlexConn(cin, cout, stride=2)(x)
    assert y.shape == (1, cout, 3, 3)
    assert torch.allclose(y, FlexConn(cin, cout)(nn.functional.avg_pool2d(x, 2)), atol=1e-6)
    odd = FlexConn(cin, cout, stride=2)(torch.randn(1, cin, 7, 7))
    conv = nn.Conv2d(cin, cout, 3, 2, 1)(torch.randn(1, cin, 7, 7))
    assert odd.shape == conv.shape  # ceil_mode: the skip matches a strided 3x3 conv on odd sizes


def test_basq_unit_is_bn_conv_bn_relu_plus_flexconn_then_bn():
    unit = BasqUnit(4, 8, 3, stride=2).eval()
    for bn in (unit.bn_in, unit.bn, unit.bn_out):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 6, 6)
    inner = torch.relu(unit.bn(unit.conv(unit.bn_in(x))))
    skip = nn.functional.avg_pool2d(x, 2).repeat(1, 2, 1, 1)
    assert torch.allclose(unit(x), unit.bn_out(inner + skip), atol=1e-6)


# ----------------------------------------------------------------------------------------- clip quantizer
def test_clip_quantizer_paper_levels_and_gradients():
    q = ClipQuantizer(2, alpha_init=3.0)
    x = torch.tensor([-1.0, 0.4, 0.6, 1.4, 2.9, 3.0, 5.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == pytest.approx([0, 0, 1, 1, 3, 3, 3])  # step a/3 = 1
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0, 0]
    assert q.alpha.grad.item() == 2.0  # x >= a (PACT eq. 3)
    q1 = ClipQuantizer(1, alpha_init=2.0)
    assert q1(torch.tensor([-1.0, 0.9, 1.1, 7.0])).tolist() == [0, 0, 2, 2]  # 1 bit: {0, clip}


def test_clip_quantizer_official_step_is_the_float32_expression():
    assert official_step_fraction(1) == 1.0
    frac = official_step_fraction(2)
    assert frac == float(1 - torch.tensor(1 - 1 / 3, dtype=torch.float32)) and frac < 1 / 3
    q = ClipQuantizer(2, alpha_init=3.0, step="official")
    x = torch.tensor([0.5, 1.4999999, 3.0, 4.0], requires_grad=True)
    y = q(x)
    d = 3.0 * frac
    assert torch.allclose(y, torch.round(torch.clamp(x.detach(), 0, 3) / d) * d)
    assert y[0].item() == pytest.approx(d)  # 0.5 / d > 0.5: rounds up where a/3 would sit exactly on .5
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 0, 0] and q.alpha.grad.item() == 1.0  # strict x > a
    with pytest.raises(ConfigError, match="step"):
        ClipQuantizer(2, step="pact")


# ----------------------------------------------------------------------------------------- the layer kind
def _small_supernet(block: str = "basq", bits: int = 2, lambdas=LAMBDAS) -> nn.Module:
    model = build_network("basq_mobilenet_v2", 10, block=block, **SMALL_MBV2)
    quantize_model(model, basq_spec(bits, lambdas=lambdas))
    return model


def test_kind_builds_branch_blocks_with_per_branch_batchnorms():
    model = _small_supernet()
    blocks = searchable_blocks(model)
    assert [n for n, _ in blocks] == ["features.1.dw.conv", "features.2.dw.conv", "features.3.dw.conv",
                                      "features.4.dw.conv"]
    assert search_space(model) == (7,) * 4
    unit = model.features[2].dw
    assert isinstance(unit.conv, BranchClipConv2d) and len(unit.conv.clips) == 7
    for bn in (unit.bn_in, unit.bn, unit.bn_out):
        assert isinstance(bn, BranchBatchNorm2d) and bn.selector is unit.conv.selector and len(bn.bns) == 7
    expand = model.features[2].expand
    assert isinstance(expand.conv, QConv2d) and type(expand.bn) is nn.BatchNorm2d
    assert expand.conv.act_quantizer.per_channel and not expand.conv.act_quantizer.signed
    wq = unit.conv.weight_quantizer
    assert wq.per_channel and wq.symmetric and wq.qrange(2) == (-1, 1)
    assert type(model.features[0][0]) is nn.Conv2d and type(model.classifier[1]) is nn.Linear  # float edges
    standard = _small_supernet("standard")
    block = standard.features[2]
    assert isinstance(block.dw, BranchClipConv2d)
    assert isinstance(block.expand_bn, BranchBatchNorm2d) and isinstance(block.dw_bn, BranchBatchNorm2d)
    assert type(block.project_bn) is nn.BatchNorm2d
    assert isinstance(standard.features[1].dw_bn, BranchBatchNorm2d)  # t = 1: post-BN only


def test_selection_vector_switches_branches_and_round_trips():
    model = _small_supernet().eval()
    x = torch.randn(2, 3, 8, 8)
    for _, conv in searchable_blocks(model):
        for clip in conv.clips:
            clip.alpha.data.uniform_(0.5, 3)
    set_selection(model, (0, 1, 2, 3))
    assert current_selection(model) == (0, 1, 2, 3)
    y0 = model(x)
    set_selection(model, (6, 1, 2, 3))
    assert not torch.allclose(model(x), y0)
    state = model.state_dict()
    other = _small_supernet().eval()
    other.load_state_dict(state)
    assert current_selection(other) == (6, 1, 2, 3)
    set_selection(other, (0, 1, 2, 3))
    assert torch.allclose(other(x), y0)
    with pytest.raises(ConfigError, match="4 searchable blocks"):
        set_selection(model, (0, 1))
    with pytest.raises(ConfigError, match="7 branches"):
        set_selection(model, (0, 1, 2, 7))


def test_only_the_selected_branch_gets_gradients():
    model = _small_supernet()
    set_selection(model, (3, 3, 3, 3))
    model(torch.randn(4, 3, 8, 8)).square().sum().backward()
    for _, conv in searchable_blocks(model):
        assert [c.alpha.grad is not None for c in conv.clips] == [j == 3 for j in range(7)]


def test_each_branch_clip_receives_its_own_weight_decay():
    lambdas = (1e-1, 1e-2, 0.0)
    model = _small_supernet(lambdas=lambdas)
    groups = clip_param_groups(model)
    assert [g["weight_decay"] for g in groups] == list(lambdas)
    blocks = [m for _, m in searchable_blocks(model)]
    for j, g in enumerate(groups):
        assert [id(p) for p in g["params"]] == [id(m.clips[j].alpha) for m in blocks]
    # coupled L2 in the optimizer: with zero loss gradient, clip j moves by exactly lr * lambda_j * clip
    opt = torch.optim.SGD(groups, lr=0.5)
    before = {j: [m.clips[j].alpha.item() for m in blocks] for j in range(3)}
    for g in groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for j, lam in enumerate(lambdas):
        assert [m.clips[j].alpha.item() for m in blocks] == pytest.approx(
            [a * (1 - 0.5 * lam) for a in before[j]])


def test_kind_options_are_checked():
    model = build_network("basq_mobilenet_v2", 10, **SMALL_MBV2)
    spec = basq_spec(2, lambdas=LAMBDAS)
    spec.options["clip_layers"] = "pointwise"
    with pytest.raises(ConfigError, match="clip_layers"):
        quantize_model(model, spec)
    with pytest.raises(ConfigError, match="bits must be in 1..8"):
        basq_spec(0, lambdas=LAMBDAS)


def test_clip_layers_none_gives_a_plain_lsq_network_and_one_bit_uses_sign_weights():
    model = build_network("basq_mobilenet_v2", 10, block="standard", **SMALL_MBV2)
    quantize_model(model, basq_spec(2, lambdas=LAMBDAS, clip_layers="none"))
    assert searchable_blocks(model) == [] and isinstance(model.features[1].dw, QConv2d)
    model = build_network("basq_resnet18", 10, widths=[4, 8], blocks=[1, 1], stem="cifar")
    quantize_model(model, basq_spec(1, lambdas=LAMBDAS))
    conv = model.layers[1][0].unit1.conv
    assert isinstance(conv, BranchClipConv2d) and conv.weight_quantizer.name == "sign" and conv.a_bits == 1
    assert isinstance(model.fc, nn.Linear) and not isinstance(model.fc, QLinear)
    y = model(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10)
    assert torch.unique(conv.weight_quantizer(conv.weight)).tolist() == [-1.0, 1.0]


# ----------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize(("bits", "expected"), [(2, 6.705119232e9), (3, 15.086519e9), (4, 26.820477e9)])
def test_resnet18_bitops_table5(bits, expected):
    model = build_network("basq_resnet18", 1000)
    quantize_model(model, basq_spec(bits, lambdas=LAMBDAS))
    report = count(model, (3, 224, 224), convention="basq")
    assert report.macs == 1_676_279_808  # the 16 3x3 convs (flexconn replaces the 1x1 downsample convs)
    assert report.bops == pytest.approx(expected, rel=1e-6)


def test_mobilenet_v2_has_17_searchable_blocks_and_torchvision_macs():
    for block in ("basq", "standard"):
        model = build_network("basq_mobilenet_v2", 1000, block=block)
        quantize_model(model, basq_spec(2, lambdas=LAMBDAS))
        assert len(searchable_blocks(model)) == 17
        report = count(model, (3, 224, 224), convention="basq")
        # torchvision MobileNetV2's 300.8 M MACs without the first conv (10.8 M) and the classifier (1.28 M)
        assert report.macs == 288_656_256


def test_conv_init_official_is_uniform_001_except_the_stem():
    model = build_network("basq_resnet18", 10, widths=[4, 8], blocks=[1, 1], stem="cifar")
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("stem")]
    assert convs and all(c.weight.abs().max() <= 0.01 for c in convs)
    assert model.stem[0].weight.abs().max() > 0.01
    torch_init = build_network("basq_resnet18", 10, widths=[4, 8], blocks=[1, 1], stem="cifar",
                               conv_init="torch")
    assert torch_init.layers[0][0].unit1.conv.weight.abs().max() > 0.01
    with pytest.raises(ConfigError, match="conv_init"):
        build_network("basq_resnet18", 10, conv_init="kaiming")


@pytest.mark.parametrize("block", ["basq", "standard"])
@pytest.mark.parametrize("step", ["paper", "official"])
def test_per_sample_selection_equals_one_forward_per_candidate(block, step):
    """Several candidates in one forward (each sample through its own branches) give the logits and the
    accuracies of one forward per candidate."""
    from papers.basq.folds import candidates_top1, top1
    from papers.basq.layers import per_sample_selection, sample_selection

    model = build_network("basq_mobilenet_v2", 10, block=block, **SMALL_MBV2)
    quantize_model(model, basq_spec(2, lambdas=LAMBDAS, clip_step=step))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 8, 8))  # LSQ steps initialised
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    blocks = searchable_blocks(model)
    for _, conv in blocks:
        for clip in conv.clips:
            clip.alpha.data.uniform_(0.5, 3)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    candidates = [sample_selection(search_space(model), gen) for _ in range(5)]
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    with torch.no_grad(), per_sample_selection(blocks, candidates, 6, "cpu"):
        together = model(x.repeat(5, 1, 1, 1))
    for i, cand in enumerate(candidates):
        set_selection(model, cand)
        with torch.no_grad():
            torch.testing.assert_close(together[6 * i:6 * (i + 1)], model(x), rtol=1e-5, atol=1e-5)
    batches = [(x, y), (x.flip(0), y.flip(0))]
    one_by_one = []
    for cand in candidates:
        set_selection(model, cand)
        one_by_one.append(top1(model, batches))
    assert candidates_top1(model, blocks, candidates, batches, "cpu", images_per_forward=12) == \
        pytest.approx(one_by_one)
    model.train()
    with pytest.raises(ConfigError, match="eval mode"), per_sample_selection(blocks, candidates, 6, "cpu"):
        model(x.repeat(5, 1, 1, 1))


@pytest.mark.parametrize("step", ["paper", "official"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_clip_quantizer_evaluation_path_gives_the_training_values(step, bits):
    q = ClipQuantizer(bits, alpha_init=2.5, step=step)
    levels = 2**bits - 1
    x = torch.cat([torch.randn(10000) * 2, torch.arange(levels + 1) * 2.5 / levels, torch.tensor([2.5])])
    with torch.no_grad():
        fast = q(x)
    assert torch.equal(fast, q(x.clone().requires_grad_(True)).detach())


def test_the_kind_is_found_by_name_without_importing_the_paper():
    """``core.paper.Paper.layer_kinds``: asking core for the kind ``basq`` imports papers.basq.layers."""
    import subprocess
    import sys

    code = ("import sys; from core.nn import QuantSpec; assert 'papers.basq.layers' not in sys.modules; "
            "QuantSpec(kind='basq'); print('papers.basq.layers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.parametrize("step", ["paper", "official"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_clip_grid_is_exact_for_onnx_export(step, bits):
    """``grid()`` (core.export): QuantizeLinear -> DequantizeLinear with the stated step reproduces the
    clip quantizer bit for bit, in training (STE kernels) and evaluation (no-grad path) alike."""
    q = ClipQuantizer(bits, alpha_init=1.7, step=step)
    levels = 2**bits - 1
    grid = q.grid()
    d = float(grid.scale)
    ties = (torch.arange(levels + 1) + 0.5) * d  # half-steps: both rules must round them the same way
    x = torch.cat([torch.randn(20000) * 2, ties, torch.tensor([1.7, 1.7 + 1e-6, -1e-6])])
    with torch.no_grad():
        evaluated = q(x)
    trained = q(x.clone().requires_grad_(True)).detach()
    assert grid.exact and (grid.qmin, grid.qmax) == (0, levels)
    assert torch.equal(grid.fake_quant(x), evaluated) and torch.equal(evaluated, trained)
