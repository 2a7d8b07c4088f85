"""BASQ's networks (float; :func:`basq_spec` + ``core.nn.quantize_model`` make them BASQ supernets).

- :class:`FlexConn`: the flexible skip connection (supplementary Sec. 3.3, Fig. 4; reference notes):
  equal widths: identity; wider: the input repeated along channels; narrower: the input cut into
  output-wide chunks that are summed (a remainder chunk is added to the first channels); stride 2: a
  2x2 average pool.
- :class:`BasqUnit`: the new building block ``BN -> quantizer -> conv -> BN -> ReLU``, plus the flexconn
  skip of its input, then one more BN. The quantizer is the conv's input quantizer (the layer kind puts
  it there); when the conv is a searchable block, its three BNs are per-branch (``BRANCH_BATCHNORMS``).
- MobileNetV2 (``basq_mobilenet_v2``) with ``block="basq"`` (official: every 1x1 and the depthwise 3x3
  of an inverted residual is a :class:`BasqUnit`; the last 1x1 (320 -> 1280) too) or ``block="standard"``
  (torchvision's inverted residual: Table 1's "BASQ without our block structure").
- ResNet-18 (``basq_resnet18``): each 3x3 conv is a :class:`BasqUnit` whose flexconn replaces the 1x1
  downsample convs (Tables 4 and 5: the BitOPs of the 16 3x3 convs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.nn import QuantSpec

#: MobileNetV2 (t, c, n, s); the first row is the stem conv (the official table lists it as a stage).
MBV2_SETTING = ((1, 32, 1, 2), (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
BLOCKS = ("basq", "standard")


class FlexConn(nn.Module):
    """Parameter-free skip from ``in_channels`` to ``out_channels`` (module docstring).

    Wider by a non-integer factor (not in the paper's networks, where it would fail in the official code):
    the input is repeated ``ceil(out / in)`` times and cut to ``out`` channels. Stride ``s``: ``s x s``
    average pooling with ``ceil_mode`` so odd sizes match a padded 3x3 conv's output (identical for even
    sizes).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = int(in_channels), int(out_channels), int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        cin, cout = self.in_channels, self.out_channels
        if cout == cin:
            return x
        if cout > cin:
            return x.repeat(1, math.ceil(cout / cin), 1, 1)[:, :cout]
        k, rest = divmod(cin, cout)
        n, _, h, w = x.shape
        out = x[:, :k * cout].reshape(n, k, cout, h, w).sum(1)
        if rest:  # the remainder chunk, zero-padded, goes to the first `rest` output channels
            out = out + F.pad(x[:, k * cout:], (0, 0, 0, 0, 0, cout - rest))
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasqUnit(nn.Module):
    """``bn_out(relu(bn(conv(bn_in(x)))) + flexconn(x))``; the conv's input quantizer sits between
    ``bn_in`` and the conv."""

    BRANCH_BATCHNORMS = {"conv": ("bn_in", "bn", "bn_out")}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.skip = FlexConn(in_channels, out_channels, stride)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_out(self.relu(self.bn(self.conv(self.bn_in(x)))) + self.skip(x))


class BasqInvertedResidual(nn.Module):
    """MobileNetV2's inverted residual of BASQ units: 1x1 expansion (if ``t != 1``), depthwise 3x3 (the
    searchable block), 1x1 projection; ``+ x`` when the stride is 1 and the widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.expand = BasqUnit(in_channels, hidden) if expand_ratio != 1 else None
        self.dw = BasqUnit(hidden, hidden, 3, stride, groups=hidden)
        self.project = BasqUnit(hidden, out_channels)
        self.use_res = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x) if self.expand is not None else x))
        return out + x if self.use_res else out


class InvertedResidual(nn.Module):
    """torchvision's inverted residual (1x1 -> BN -> ReLU6, depthwise 3x3 -> BN -> ReLU6, 1x1 -> BN,
    ``+ x``). As a searchable block its depthwise conv's pre-BN (the expansion BN) and post-BN are
    per-branch."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        if expand_ratio != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        else:
            self.expand = self.expand_bn = None
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.use_res = stride == 1 and in_channels == out_channels
        self.BRANCH_BATCHNORMS = {"dw": ("expand_bn", "dw_bn") if expand_ratio != 1 else ("dw_bn",)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.expand_bn(self.expand(x))) if self.expand is not None else x
        out = self.project_bn(self.project(self.act(self.dw_bn(self.dw(h)))))
        return out + x if self.use_res else out


CONV_INITS = ("official", "torch")


@torch.no_grad()
def init_quantized_convs(model: nn.Module, stem: nn.Module, conv_init: str) -> None:
    """``official``: every conv but the stem's drawn from U(-0.01, 0.01) (the official ``QtConv``);
    ``torch``: PyTorch's default initialisation kept."""
    if conv_init not in CONV_INITS:
        raise ConfigError(f"conv_init must be one of {list(CONV_INITS)}, got {conv_init!r}")
    if conv_init == "official":
        skip = {id(m) for m in stem.modules()}
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in skip:
                nn.init.uniform_(m.weight, -0.01, 0.01)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int, act: type[nn.Module]):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), act(inplace=True))


class BasqMobileNetV2(nn.Module):
    """MobileNetV2 as in the official code: stem conv 3x3 (stride ``stem_stride``) -> BN -> ReLU, the
    inverted residuals of ``setting`` (17 at the default), a last 1x1 conv to ``last_channels``, global
    average pooling, dropout 0.2 and the classifier. ``setting`` rows are ``(t, c, n, s)``; the first row
    is the stem; ``width_mult`` scales every width (rounded to an integer, as the official divisor 1);
    ``conv_init``: see :func:`init_quantized_convs`."""

    def __init__(self, num_classes: int = 1000, block: str = "basq", width_mult: float = 1.0,
                 setting: Sequence[Sequence[int]] = MBV2_SETTING, stem_stride: int | None = None,
                 last_channels: int = 1280, dropout: float = 0.2, conv_init: str = "official") -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"basq_mobilenet_v2 block must be one of {list(BLOCKS)}, got {block!r}")
        if len(setting) < 2 or any(len(row) != 4 for row in setting):
            raise ConfigError(f"basq_mobilenet_v2 setting: rows of (t, c, n, s), a stem row first; "
                              f"got {setting}")

        def width(c: int) -> int:
            return max(1, int(c * width_mult + 0.5))

        _, stem_c, _, stem_s = setting[0]
        channels = width(stem_c)
        stride = stem_s if stem_stride is None else stem_stride
        features: list[nn.Module] = [_conv_bn_relu(3, channels, 3, stride, nn.ReLU)]
        unit = BasqInvertedResidual if block == "basq" else InvertedResidual
        for t, c, n, s in setting[1:]:
            for i in range(n):
                features.append(unit(channels, width(c), s if i == 0 else 1, t))
                channels = width(c)
        last = int(last_channels)
        features.append(BasqUnit(channels, last) if block == "basq"
                        else _conv_bn_relu(channels, last, 1, 1, nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self.block = block
        init_quantized_convs(self, self.features[0], conv_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasqBasicBlock(nn.Module):
    """A ResNet basic block as two BASQ units (3x3 each; the first strided); each unit's flexconn is its
    shortcut (there is no 1x1 downsample conv)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.unit1 = BasqUnit(in_channels, out_channels, 3, stride)
        self.unit2 = BasqUnit(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit2(self.unit1(x))


class BasqResNet(nn.Module):
    """ResNet of :class:`BasqBasicBlock` stages. ``stem="imagenet"``: conv 7x7/2 -> BN -> ReLU ->
    max-pool 3x3/2 (torchvision); ``"cifar"``: conv 3x3/1 -> BN -> ReLU. ``conv_init``: see
    :func:`init_quantized_convs`."""

    def __init__(self, num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2), stem: str = "imagenet",
                 conv_init: str = "official") -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ConfigError(f"basq_resnet18: widths {list(widths)} and blocks {list(blocks)} must pair up")
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = _conv_bn_relu(3, widths[0], 3, 1, nn.ReLU)
        else:
            raise ConfigError(f"basq_resnet18 stem must be 'imagenet' or 'cifar', got {stem!r}")
        channels, stages = widths[0], []
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(n):
                stage.append(BasqBasicBlock(channels, w, 2 if i > 0 and b == 0 else 1))
                channels = w
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_quantized_convs(self, self.stem, conv_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


MODELS: dict[str, Callable[..., nn.Module]] = {"basq_mobilenet_v2": BasqMobileNetV2,
                                               "basq_resnet18": BasqResNet}


def build_network(name: str, num_classes: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """One of :data:`MODELS` (BASQ's networks), else ``core.models.build_model`` (e.g. a teacher
    ``resnet50`` from a local checkpoint, or ``digits_resnet``)."""
    if name not in MODELS:
        from core.models import build_model

        return build_model(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    try:
        model = MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {name} with options {kwargs}: {exc}") from None
    if pretrained is not None:
        from core.models import load_pretrained

        load_pretrained(model, pretrained)
    return model


def basq_spec(bits: int, *, lambdas: Sequence[float], clip_layers: str = "spatial", clip_init: float = 6.0,
              clip_step: str = "paper", lsq_grad_scale: str = "tensor", binary_weight_scale: bool = False
              ) -> QuantSpec:
    """The BASQ quantizers (official): searchable blocks' inputs: the branch clip quantizers; other conv
    inputs: LSQ per input channel, unsigned; weights: LSQ per output channel, symmetric ``+-(2^(b-1)-1)``
    (``bits >= 2``) or ``sign`` (1 bit; ``binary_weight_scale``: times each output channel's mean ``|W|``);
    first conv and classifier full precision."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"basq: bits must be in 1..8, got {bits}")
    a_options = {"per_channel": True, "init": "lsq", "grad_scale": lsq_grad_scale}
    if bits == 1:
        w_quant, w_options = "sign", {"per_channel_scale": bool(binary_weight_scale)}
    else:
        w_quant = "lsq"
        w_options = {"per_channel": True, "symmetric": True, "init": "lsq", "grad_scale": lsq_grad_scale}
    return QuantSpec(kind="basq", w_quant=w_quant, a_quant="lsq", w_bits=bits, a_bits=bits,
                     w_options=w_options, a_options=a_options, first="float", last="float",
                     options={"lambdas": [float(v) for v in lambdas], "clip_layers": clip_layers,
                              "clip_init": float(clip_init), "clip_step": clip_step})
