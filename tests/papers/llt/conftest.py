"""Small models and data for LLT's tests."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    return TensorDataset(x, y)
