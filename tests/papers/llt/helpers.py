"""Small models shared by LLT's tests."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def reference_file(name: str) -> Path:
    """``$MPQ_REFERENCE_DIR/<name>`` if set, else ``<repo>/../shared/reference/<name>`` (may not exist)."""
    default = Path(__file__).resolve().parents[3].parent / "shared" / "reference"
    return Path(os.environ.get("MPQ_REFERENCE_DIR") or default) / name


def tiny_net(num_classes: int = 4) -> nn.Module:
    """first conv (float), two searchable convs with BN, fc (float)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
