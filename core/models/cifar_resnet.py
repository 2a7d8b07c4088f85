"""ResNet for CIFAR (He et al., CVPR 2016, Sec. 4.2) and a tiny variant for the embedded digits set.

The CIFAR network: a 3x3 conv with 16 filters, then three stages of ``n`` BasicBlocks with 16, 32
and 64 filters on 32x32, 16x16 and 8x8 maps (stride 2 at the first block of stages 2 and 3),
global average pooling and a fully connected layer: depth ``6n + 2`` (ResNet-20/32/56: n = 3/5/9).
Shortcuts use option A: identity, and where the shape changes the input is subsampled by the
stride and zero-padded in channels, so shortcuts have no parameters. This is what BP-NAS's
ResNet-20 table implies (supplementary Table 1: block parameter counts 432, 4.61e3, 1.38e4,
1.84e4, 5.53e4, 7.37e4 are the convolution weights alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.models.registry import init_weights, register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels ``in -> out`` (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"option-A shortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front, self.pad_back = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_front or self.pad_back:
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        elif shortcut == "B":  # projection shortcut (option B), offered for comparison
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            raise ConfigError(f"unknown shortcut option {shortcut!r}; use 'A' (parameter-free) or 'B'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv -> stages of BasicBlocks -> global average pool -> fc.

    Args:
        blocks: number of blocks per stage (``(3, 3, 3)`` is ResNet-20).
        widths: channels per stage; the stem has ``widths[0]`` channels.
        num_classes: classifier outputs.
        in_channels: input image channels.
        shortcut: ``"A"`` (parameter-free, the paper's CIFAR choice) or ``"B"`` (1x1 projection).
    """

    def __init__(self, blocks: Sequence[int] = (3, 3, 3), widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> None:
        super().__init__()
        blocks, widths = tuple(int(b) for b in blocks), tuple(int(w) for w in widths)
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1 or min(widths) < 1:
            raise ConfigError(f"blocks {blocks} and widths {widths} must be equally long positive tuples")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        for stage, (n, width) in enumerate(zip(blocks, widths), start=1):
            layers = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int, num_classes: int, **kwargs) -> CifarResNet:
    if (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(blocks=(n, n, n), num_classes=num_classes, **kwargs)


@register_model(input_size=(3, 32, 32))
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27 M parameters), option-A shortcuts."""
    return _cifar_resnet(20, num_classes, **kwargs)


@register_model(input_size=(3, 32, 32))
def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46 M parameters), option-A shortcuts."""
    return _cifar_resnet(32, num_classes, **kwargs)


@register_model(input_size=(3, 32, 32))
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85 M parameters), option-A shortcuts."""
    return _cifar_resnet(56, num_classes, **kwargs)


@register_model(input_size=(3, 16, 16))
def digits_resnet(num_classes: int = 10, widths: Sequence[int] = (4, 8, 16),
                  blocks: Sequence[int] | int = 1, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """A tiny CIFAR-style ResNet for the embedded digits benchmark (inputs 3x16x16 or 3x32x32).

    ``blocks`` is an int (the same for every stage) or one count per stage.
    """
    if isinstance(blocks, int):
        blocks = (blocks,) * len(tuple(widths))
    return CifarResNet(blocks=blocks, widths=widths, num_classes=num_classes, in_channels=in_channels,
                       shortcut=shortcut)
