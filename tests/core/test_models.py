"""core.models: the registry (every registered model is smoke-tested), architectures, build_model errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.errors import CheckpointError, ConfigError
from core.models import MODELS, PadShortcut, build_model, list_models
from core.models.edmips_resnet import EdMIPSBasicBlock, EdMIPSBottleneck


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_builds_and_runs(name):
    model = build_model(name, num_classes=7).eval()
    size = MODELS[name].input_size
    with torch.no_grad():
        out = model(torch.randn(1, *size))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, depth, params_m", [("resnet20", 20, 0.27), ("resnet32", 32, 0.46),
                                                   ("resnet56", 56, 0.85)])
def test_cifar_resnet_depth_and_params(name, depth, params_m):
    """He et al. 2016, Table 6: ResNet-20/32/56 have 0.27M/0.46M/0.85M parameters (option A)."""
    model = build_model(name, num_classes=10)
    assert len(weight_layers(model)) == depth
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m


def test_option_a_shortcut_is_parameter_free_and_pads_channels():
    model = build_model("resnet20", num_classes=10)
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, PadShortcut) and not list(shortcut.parameters())
    x = torch.randn(1, 16, 32, 32)
    y = shortcut(x)
    assert y.shape == (1, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    option_b = build_model("resnet20", num_classes=10, shortcut="B")
    assert sum(p.numel() for p in option_b.parameters()) > sum(p.numel() for p in model.parameters())


def test_digits_resnet_options():
    model = build_model("digits_resnet", num_classes=10, widths=(4, 8, 16), blocks=(1, 2, 1))
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [1, 2, 1]
    assert model.conv1.out_channels == 4 and model.fc.in_features == 16
    for size in (16, 32):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    wide = build_model("digits_resnet", num_classes=10, widths=(8, 16), blocks=2)
    assert wide.num_stages == 2 and wide.fc.in_features == 16
    with pytest.raises(ConfigError, match="equally long"):
        build_model("digits_resnet", widths=(4, 8), blocks=(1, 1, 1))


@pytest.mark.parametrize("name, searchable", [("edmips_resnet18", 19), ("edmips_resnet50", 52)])
def test_edmips_resnet_layer_counts_match_torchvision_shapes(name, searchable):
    import torchvision

    model = build_model(name)
    layers = weight_layers(model)
    assert len(layers) - 2 == searchable  # first conv and fc excluded
    reference = getattr(torchvision.models, name.removeprefix("edmips_"))()
    assert [tuple(m.weight.shape) for _, m in layers] == \
        [tuple(m.weight.shape) for _, m in weight_layers(reference)]
    first_block = [n for n, _ in layers if n.startswith("layer2.0.")]
    expected = ["conv1", "conv2", "downsample.0"] if searchable == 19 else \
        ["conv1", "conv2", "conv3", "downsample.0"]
    assert first_block == [f"layer2.0.{n}" for n in expected]


@pytest.mark.parametrize("block_cls, args", [(EdMIPSBasicBlock, (8, 16, 2)), (EdMIPSBasicBlock, (8, 8, 1)),
                                             (EdMIPSBottleneck, (16, 4, 2)), (EdMIPSBottleneck, (16, 4, 1))])
def test_edmips_block_dataflow(block_cls, args):
    """bn0 -> relu -> conv1 -> bn1 -> relu -> conv2 -> bn2 [-> relu -> conv3 -> bn3] + residual,
    residual = x, or downsample(relu(bn0(x))) when the shape changes; no ReLU after the sum."""
    torch.manual_seed(0)
    block = block_cls(*args).eval()
    for m in block.modules():  # non-trivial BN statistics so that a misplaced BN shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, args[0], 8, 8)
    r = torch.relu
    pre = r(block.bn0(x))
    out = block.bn2(block.conv2(r(block.bn1(block.conv1(pre)))))
    if block_cls is EdMIPSBottleneck:
        out = block.bn3(block.conv3(r(out)))
    residual = x if block.downsample is None else block.downsample(pre)
    with torch.no_grad():
        assert torch.allclose(block(x), out + residual, atol=1e-6)
    assert (block.downsample is None) == (args[-1] == 1 and args[0] == args[1] * block_cls.expansion)


def test_edmips_stem_order_and_relu_before_pool():
    model = build_model("edmips_resnet18").eval()
    order = []
    for name in ("conv1", "maxpool", "bn1", "layer1", "relu", "avgpool", "fc"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: order.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert order == ["conv1", "maxpool", "bn1", "layer1", "relu", "avgpool", "fc"]


def test_mobilenet_v1_architecture():
    model = build_model("mobilenet_v1")
    layers = weight_layers(model)
    assert len(layers) == 28
    depthwise = [n for n, m in layers if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and depthwise[0] == "features.1.0"
    assert layers[0][0] == "features.0.0" and layers[-1][0] == "fc"
    assert sum(p.numel() for p in model.parameters()) == 4_231_976  # "4.2 million" (Howard et al. Table 8)


def test_alexnet_bn_and_the_bops_cli_on_it(capsys):
    """torchvision's AlexNet plus a BatchNorm after each conv and hidden fc; conv/fc MACs unchanged: 0.714 G,
    torchvision's published ``_ops`` for AlexNet (``mpq bops alexnet_bn``)."""
    import torchvision

    from core.cli import main

    model = build_model("alexnet_bn", num_classes=1000)
    kinds = [type(m).__name__ for m in [*model.features, *model.classifier]]
    assert kinds.count("BatchNorm2d") == 5 and kinds.count("BatchNorm1d") == 2
    for i, k in enumerate(kinds):
        if k in ("Conv2d", "Linear") and i < len(kinds) - 1:
            assert kinds[i + 1].startswith("BatchNorm")
    bn_params = 2 * (64 + 192 + 384 + 256 + 256) + 2 * 2 * 4096
    meta = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"] + bn_params
    assert main(["bops", "alexnet_bn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 8 and round(data["totals"]["macs_all"] / 1e9, 3) == meta["_ops"]


def test_googlenet_without_auxiliary_heads():
    import torchvision

    model = build_model("googlenet_noaux", num_classes=1000)
    assert model.aux1 is None and model.aux2 is None and not model.transform_input
    assert len(weight_layers(model)) == 58  # EdMIPS: 56 searched + first conv + fc
    meta = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    assert MODELS["inception_v3_noaux"].input_size == (3, 299, 299)
    with pytest.raises(ConfigError, match="no auxiliary classifiers"):
        build_model("googlenet_noaux", aux_logits=True)


def test_build_model_torchvision_and_timm():
    alexnet = build_model("alexnet", num_classes=10)
    assert alexnet.classifier[-1].out_features == 10
    timm = pytest.importorskip("timm")
    name = "resnet10t" if timm.is_model("resnet10t") else "resnet18"
    model = build_model(name, num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert "resnet20" in list_models("core") and "alexnet" in list_models("torchvision")


def test_build_model_errors():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet2O'.*Did you mean.*resnet20"):
        build_model("resnet2O")
    with pytest.raises(ConfigError, match="cannot build model 'resnet20' with options"):
        build_model("resnet20", widthz=3)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        build_model("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="unknown model source 'pypi'"):
        list_models("pypi")


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "ddp"])
def test_pretrained_round_trip(tmp_path, wrap):
    source = build_model("resnet20", num_classes=10)
    state = source.state_dict()
    payload = {"raw": state, "model": {"model": state, "epoch": 3}, "state_dict": {"state_dict": state},
               "ddp": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    model = build_model("resnet20", num_classes=10, pretrained=path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*nothing is downloaded"):
        build_model("resnet20", num_classes=10, pretrained=tmp_path / "missing.pt")
    deeper = tmp_path / "r32.pt"
    torch.save(build_model("resnet32", num_classes=10).state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer1\.3\.conv1\.weight"):
        build_model("resnet20", num_classes=10, pretrained=deeper)
    with pytest.raises(CheckpointError, match=r"missing keys: layer1\.5\.conv1\.weight"):
        build_model("resnet56", num_classes=10, pretrained=deeper)
    classes = tmp_path / "c100.pt"
    torch.save(build_model("resnet20", num_classes=100).state_dict(), classes)
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc\.weight \(checkpoint \(100, 64\)"):
        build_model("resnet20", num_classes=10, pretrained=classes)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_model("resnet20", num_classes=10, pretrained=garbage)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": PadShortcut(1, 2, 1)}, unsafe)  # a pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match="refused to load checkpoint .*PadShortcut") as err:
        build_model("resnet20", num_classes=10, pretrained=unsafe)
    assert "weights_only" not in str(err.value)  # never torch's advice to disable the safe loader
    not_a_state = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        build_model("resnet20", num_classes=10, pretrained=not_a_state)
