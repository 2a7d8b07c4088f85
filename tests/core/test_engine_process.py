"""core.engine.process (process setup, the per-rank batch, model and loaders from the shared config
sections) and core.engine.bn (BatchNorm statistics re-estimation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import core.engine.process as process
from core.config import DataConfig, ModelConfig, RunConfig
from core.engine import (
    DistInfo,
    build_model_from_config,
    classification_data,
    num_classes_for,
    per_rank_batch,
    reestimate_bn_statistics,
    setup_process,
)
from core.errors import ConfigError
from core.quant import is_compiled, set_compiled


def test_per_rank_batch_refuses_a_global_batch_that_does_not_divide():
    assert per_rank_batch(256, 8) == 32 and per_rank_batch(7, 1) == 7
    with pytest.raises(ConfigError, match=r"data.batch_size=100 .* 8 processes; .* \(e.g. 96 or 104\)"):
        per_rank_batch(100, 8)
    with pytest.raises(ConfigError, match="finetune.batch_size=0"):
        per_rank_batch(0, 1, "finetune.batch_size")


def test_setup_process_seeds_seed_plus_rank_and_switches_the_compiled_path(monkeypatch):
    monkeypatch.setattr(process, "init_distributed", lambda device, timeout_s: DistInfo(rank=2, world_size=4))
    try:
        info = setup_process(RunConfig(seed=5, compile=True))
        got = torch.rand(3)
        assert info.rank == 2 and is_compiled()
    finally:
        set_compiled(False)
    torch.manual_seed(7)  # seed + rank
    assert torch.equal(got, torch.rand(3))
    monkeypatch.setattr(process, "init_distributed", lambda device, timeout_s: DistInfo())
    setup_process(RunConfig(seed=5))
    got = torch.rand(3)
    torch.manual_seed(5)  # one process: the seed itself
    assert torch.equal(got, torch.rand(3)) and not is_compiled()


def test_classification_data_splits_the_global_batch():
    data = DataConfig(name="digits", image_size=8, batch_size=64, workers=0)
    one = classification_data(data, seed=0)
    assert one.train.batch_size == 64 and one.num_classes == 10 and one.input_size == (3, 8, 8)
    two = classification_data(data, seed=0, info=DistInfo(world_size=2))
    assert two.train.batch_size == 32 and two.val.batch_size == 32
    with pytest.raises(ConfigError, match="finetune.batch_size=63 is the global batch"):
        classification_data(data, seed=0, batch_size=63, info=DistInfo(world_size=2),
                            batch_key="finetune.batch_size")
    with pytest.raises(ConfigError, match="data.batch_size=64 .* 3 processes"):
        classification_data(data, seed=0, info=DistInfo(world_size=3))


def test_model_from_config_num_classes_kwargs_and_pretrained(tmp_path):
    cfg = ModelConfig(name="digits_resnet", kwargs={"widths": [4, 4, 8], "blocks": 1})
    assert num_classes_for(cfg, "digits") == 10 and num_classes_for(ModelConfig(num_classes=3), "digits") == 3
    model = build_model_from_config(cfg, "digits")
    assert model.fc.out_features == 10 and model.conv1.out_channels == 4
    torch.save(model.state_dict(), tmp_path / "w.pt")
    weights = ModelConfig(name=cfg.name, kwargs=cfg.kwargs, pretrained=str(tmp_path / "w.pt"))
    again = build_model_from_config(weights, "digits")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_bn_reestimation_equals_the_plain_mean_over_the_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 6, 6, generator=g) * 2 + 1
    data = TensorDataset(images, torch.zeros(32, dtype=torch.long))
    model = _bn_net().eval()
    bn = model[1]
    bn.running_mean.fill_(5.0)
    weight = model[0].weight.detach().clone()
    used = reestimate_bn_statistics(model, DataLoader(data, batch_size=8), 24)
    assert used == 24
    with torch.no_grad():
        feats = model[0](images[:24])
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)  # mean over all 24 images
    batch_vars = [feats[i:i + 8].var(dim=(0, 2, 3), unbiased=True) for i in (0, 8, 16)]
    assert torch.allclose(bn.running_var, torch.stack(batch_vars).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training and torch.equal(model[0].weight, weight)


def test_bn_reestimation_cuts_the_last_batch_and_skips_models_without_bn():
    data = TensorDataset(torch.randn(20, 3, 6, 6), torch.zeros(20, dtype=torch.long))
    model = _bn_net()
    assert reestimate_bn_statistics(model, DataLoader(data, batch_size=8), 12) == 12
    with torch.no_grad():
        feats = model[0](data.tensors[0][:12])
    means = torch.stack([feats[:8].mean(dim=(0, 2, 3)), feats[8:12].mean(dim=(0, 2, 3))]).mean(0)
    assert torch.allclose(model[1].running_mean, means, atol=1e-5) and model.training
    assert reestimate_bn_statistics(nn.Sequential(nn.Linear(2, 2)), DataLoader(data), 5) == 0
    assert reestimate_bn_statistics(model, DataLoader(data), 0) == 0
