"""The ``scale_clip`` quantizer (Scale-Clip distribution reshaping, BP-NAS supp. section 5): levels, clip
and gradient, the running activation statistic, signed inputs, and its integer grid."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError, ExportError
from core.quant import ScaleClipQuantizer, create_quantizer


def test_scale_clip_weight_levels_clip_and_gradient():
    w = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.3, 1.1, 2.9], requires_grad=True)
    q = ScaleClipQuantizer(2, role="weight", k=2.0, stat="mean_abs")
    bound = 2.0 * float(w.detach().abs().mean())
    out = q(w)
    step = 2 * bound / 4
    levels = {round(v, 5) for v in ((torch.arange(4) - 1.5) * step).tolist()}
    assert {round(v, 5) for v in out.tolist()} <= levels and len(set(out.tolist())) > 2
    out.sum().backward()
    inside = (w.detach().abs() <= bound).float()
    assert torch.equal(w.grad, inside)  # STE inside the clip, zero for the clipped weights
    plain = ScaleClipQuantizer(1, role="weight", k=1.0, stat="max")  # no reshaping: the full range
    assert plain(torch.tensor([-2.0, 0.5, 2.0])).tolist() == [-1.0, 1.0, 1.0]
    assert torch.equal(ScaleClipQuantizer(32, role="weight")(w), w)  # 32 bits: not quantized


def test_scale_clip_activation_running_statistic():
    q = ScaleClipQuantizer(3, role="activation", k=4.0, stat="mean_abs", momentum=0.5)
    x1, x2 = torch.rand(100), 3 * torch.rand(100)
    q.train()
    out = q(x1)
    t1 = 4.0 * float(x1.mean())
    assert float(out.max()) <= t1 + 1e-6 and len(set(out.tolist())) <= 8
    assert torch.allclose(out / (t1 / 7), (out / (t1 / 7)).round(), atol=1e-4)  # levels i * T / 7
    q(x2)
    running = 0.5 * float(x1.mean()) + 0.5 * float(x2.mean())
    assert float(q.running_stat.running) == pytest.approx(running, rel=1e-6)
    q.eval()
    big = torch.tensor([0.0, 100.0])
    assert float(q(big).max()) == pytest.approx(4.0 * running, rel=1e-5)  # eval: the running bound
    fresh = ScaleClipQuantizer(2, role="activation", k=2.0).eval()  # never trained: the batch's own bound
    assert float(fresh(big).max()) == pytest.approx(2.0 * 50.0)
    with pytest.raises(ConfigError, match="statistic"):
        create_quantizer("scale_clip", 2, role="weight", stat="median")
    with pytest.raises(ConfigError, match="k must be"):
        create_quantizer("scale_clip", 2, k=0)


def test_uniformization_makes_the_clipped_weights_uniform_like():
    """What Fig. 1 is about: clipping a Gaussian at 2.5 mean|W| leaves a flatter (lower kurtosis)
    distribution, and quantizing it loses less (relative MSE) at 2 bits than the full-range quantizer."""
    torch.manual_seed(0)
    w = torch.randn(100_000)
    reshaped = torch.clamp(w, -2.5 * w.abs().mean(), 2.5 * w.abs().mean())

    def kurtosis(t):
        t = t - t.mean()
        return float((t**4).mean() / (t**2).mean() ** 2)

    assert kurtosis(reshaped) < 2.5 < 3.0 == pytest.approx(kurtosis(w), abs=0.1)  # uniform: 1.8
    err_sc = float((ScaleClipQuantizer(2, role="weight")(w) - w).square().mean())
    err_plain = float((ScaleClipQuantizer(2, role="weight", k=1.0, stat="max")(w) - w).square().mean())
    assert err_sc < 0.5 * err_plain


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_integer_grid_is_exact(bits):
    torch.manual_seed(bits)
    w = torch.randn(64, 16)
    q = ScaleClipQuantizer(bits, role="weight")
    codes = q.grid(w).codes(q(w), "weights")  # raises unless every value is (odd integer) * scale exactly
    assert int(codes.abs().max()) <= 2**bits - 1 and bool((codes % 2 != 0).all())
    a = ScaleClipQuantizer(bits, role="activation")
    with pytest.raises(ExportError, match="never tracked"):
        a.grid()
    x = torch.rand(8, 32) * 3
    a.train()
    a(x)
    a.eval()
    grid = a.grid()
    assert grid.qmin == 0 and grid.qmax == 2**bits - 1
    assert torch.equal(grid.fake_quant(x), a(x))  # QuantizeLinear -> DequantizeLinear = the quantizer


def test_running_statistic_survives_a_state_dict_round_trip():
    trained = ScaleClipQuantizer(2, role="activation", k=2.0, signed=None).train()
    trained(torch.randn(64) - 0.5)  # signed input, decided on this first training batch
    fresh = ScaleClipQuantizer(2, role="activation", k=2.0, signed=None).eval()
    fresh(torch.rand(8))  # used before loading: its host-side caches must not outlive the load
    fresh.load_state_dict(trained.state_dict())
    assert fresh.running_stat.signed(torch.rand(4)) is True
    assert float(fresh.bound(torch.rand(4))) == pytest.approx(2.0 * float(trained.running_stat.running))
