"""The official LLT recipe's pieces: the SAT-style fc rescaling and per-GPU batch sizes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.config import DataConfig
from core.engine import process
from core.nn import QuantSpec, quantize_model
from papers.llt.finetune import fold_fc_rescale, rescale_fc_weight


def _quantized_fc() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    quantize_model(model, QuantSpec(kind="fixed", w_quant="lsq", a_quant="lsq", first="w8", last="w8a8"))
    return model[2]


def test_fc_rescale_matches_the_official_forward_in_training_and_evaluation():
    """Official: ``Q(W) * c`` in training (``c = 1 / (sqrt(out) std(Q(W)))``, no gradient through ``c``),
    ``b / c`` in evaluation."""
    fc = _quantized_fc()
    x = torch.randn(5, 64)
    fc(x)  # initialise the LSQ steps
    reference = [p.detach().clone() for p in fc.parameters()]
    upstream = torch.randn(5, 10)

    def official(train: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fc.zero_grad()
        qw = fc.weight_quantizer(fc.weight)
        c = 1.0 / (math.sqrt(fc.out_features) * torch.std(qw.detach()))
        out = F.linear(fc.act_quantizer(x), qw * c, fc.bias) if train else \
            F.linear(fc.act_quantizer(x), qw, fc.bias / c)
        (out * upstream).sum().backward()
        return out.detach(), [p.grad.clone() for p in fc.parameters()]

    want = {train: official(train) for train in (True, False)}
    handle = rescale_fc_weight(fc)
    for train in (True, False):
        fc.train(train)
        fc.zero_grad()
        out = fc(x)
        (out * upstream).sum().backward()
        torch.testing.assert_close(out, want[train][0], rtol=1e-5, atol=1e-6)
        for got, exp in zip([p.grad for p in fc.parameters()], want[train][1]):
            torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(p, r) for p, r in zip(fc.parameters(), reference))  # nothing modified in place
    handle.remove()  # back to the plain layer
    torch.testing.assert_close(fc(x), F.linear(fc.act_quantizer(x), fc.quantized_weight(), fc.bias))


def test_fc_rescale_folds_into_the_bias_for_export():
    """What ``final.pt`` holds: the plain layer with ``b / c`` computes the hooked layer's evaluation
    output."""
    fc = _quantized_fc()
    x = torch.randn(5, 64)
    handle = rescale_fc_weight(fc)
    fc.eval()
    want = fc(x)
    fold_fc_rescale(fc, handle)
    torch.testing.assert_close(fc(x), want, rtol=1e-5, atol=1e-6)
    assert not fc._forward_hooks


@pytest.mark.parametrize("per_device,expected", [(False, 16), (True, 64)])
def test_per_device_batch_is_the_official_per_gpu_batch(monkeypatch, per_device, expected):
    monkeypatch.setattr(process, "get_info", lambda: SimpleNamespace(world_size=4))
    data = DataConfig(name="digits", image_size=8, batch_size=256, workers=0)
    loaders = process.classification_data(data, 0, batch_size=64, per_device=per_device)
    assert loaders.train.batch_size == expected
