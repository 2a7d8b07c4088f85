"""The ResNet-18/50 variant of EdMIPS's official code (pre-activation style, BN before each conv).

Differences from torchvision's ResNet (reference notes, "Official ResNet is non-standard"):

- stem: ``conv1 -> maxpool -> bn1`` (no ReLU; the first block's ``bn0`` and ReLU follow);
- block: ``bn0 -> relu -> conv1 -> bn1 -> relu -> conv2 -> bn2`` (BasicBlock) or
  ``bn0 -> relu -> conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> conv3 -> bn3`` (Bottleneck),
  added to the residual with no ReLU after the addition;
- residual: ``x`` itself, or ``downsample(relu(bn0(x)))`` when the block changes shape, where
  ``downsample`` is a 1x1 conv (stride on it) + BN;
- a ReLU before global average pooling; Bottleneck strides on its 3x3 conv.

In the official code the ReLU before each convolution is the HWGQ activation quantizer inside the
quantized conv (HWGQ at 32 bits *is* a ReLU). Here it is an explicit ``nn.ReLU``: once
``core.nn.quantize_model`` swaps a conv for a quantized one whose input quantizer is ``hwgq``, the
quantizer acts exactly there (HWGQ clamps at 0, so the ReLU in front of it changes nothing).
Every 3x3/1x1 conv of the blocks is searched (first conv and fc stay full precision):
19 layers for ResNet-18 and 52 for ResNet-50, in module order conv1, conv2[, conv3], downsample.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.models.registry import init_weights, register_model


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class EdMIPSBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        out_ch = planes * self.expansion
        self.downsample = _downsample(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn0(x))
        residual = x if self.downsample is None else self.downsample(pre)
        out = self.bn1(self.conv1(pre))
        out = self.bn2(self.conv2(self.relu(out)))
        return out + residual


class EdMIPSBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        out_ch = planes * self.expansion
        self.downsample = _downsample(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn0(x))
        residual = x if self.downsample is None else self.downsample(pre)
        out = self.bn1(self.conv1(pre))
        out = self.bn2(self.conv2(self.relu(out)))
        out = self.bn3(self.conv3(self.relu(out)))
        return out + residual


class EdMIPSResNet(nn.Module):
    """EdMIPS's ResNet: ``block`` is :class:`EdMIPSBasicBlock` or :class:`EdMIPSBottleneck`."""

    def __init__(self, block: type[nn.Module], layers: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, 2 if i > 1 and j == 0 else 1))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.relu = nn.ReLU(inplace=True)
        # The official code asserts a 7x7 map and uses AvgPool2d(7); adaptive pooling is identical
        # there and also accepts other input sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)  # conv: normal(0, sqrt(2 / (k*k*out))) as in the official code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.maxpool(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(self.relu(x))
        return self.fc(torch.flatten(x, 1))


@register_model()
def edmips_resnet18(num_classes: int = 1000, **kwargs) -> EdMIPSResNet:
    """EdMIPS's ResNet-18 (19 searchable convs)."""
    return EdMIPSResNet(EdMIPSBasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


@register_model()
def edmips_resnet50(num_classes: int = 1000, **kwargs) -> EdMIPSResNet:
    """EdMIPS's ResNet-50 (52 searchable convs)."""
    return EdMIPSResNet(EdMIPSBottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)
