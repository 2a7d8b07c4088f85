"""A tiny OneMPS setting shared by the tests: digits at 8x8, a three-stage ResNet of 4/4/8 channels."""

from __future__ import annotations

import torch

from papers.onemps.common import build_supernet, float_model
from papers.onemps.config import OneMpsConfig, load_onemps_config

TINY = ["model.name=digits_resnet", "model.kwargs={widths: [4, 4, 8], blocks: 1}", "data.name=digits",
        "data.image_size=8", "data.batch_size=32", "data.workers=0", "run.device=cpu", "run.log_every=1000"]


def tiny_config(*overrides: str, preset: str | None = None) -> OneMpsConfig:
    return load_onemps_config(None, [*TINY, *overrides], preset)


def tiny_supernet(*overrides: str, preset: str | None = None, seed: int = 0):
    cfg = tiny_config(*overrides, preset=preset)
    torch.manual_seed(seed)
    model, costs = build_supernet(cfg, float_model(cfg), (3, 8, 8))
    return cfg, model, costs


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
