"""MobileNetV1 (Howard et al., 2017, Table 1), laid out in torchvision's style.

A 3x3 stride-2 conv with 32 filters, then 13 depthwise-separable blocks (depthwise 3x3 + BN + ReLU,
pointwise 1x1 + BN + ReLU), global average pooling and one fc: 28 conv/linear layers and
568,740,352 multiply-accumulates at 224x224 (including the fc's 1,024,000).
Module names: ``features.0.0`` (first conv), ``features.<i>.0`` (depthwise), ``features.<i>.3``
(pointwise) for i = 1..13, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError
from core.models.registry import init_weights, register_model

#: (output channels, stride) of the 13 depthwise-separable blocks.
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class MobileNetV1(nn.Module):
    """MobileNetV1 with a width multiplier (channels rounded to integers, at least 8)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be positive, got {width_mult}")

        def width(c: int) -> int:
            return max(8, int(round(c * width_mult)))

        in_ch = width(32)
        features: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_channels, in_ch, 3, 2))]
        for out, stride in MOBILENET_V1_BLOCKS:
            out = width(out)
            features.append(nn.Sequential(*_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
                                          *_conv_bn_relu(in_ch, out, 1, 1)))
            in_ch = out
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.dropout(x))


@register_model()
def mobilenet_v1(num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """MobileNetV1 1.0 (4.2 M parameters, 569 M MACs at 224x224)."""
    return MobileNetV1(num_classes=num_classes, **kwargs)
