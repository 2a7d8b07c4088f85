"""Quantizers: levels, clipping, gradients (analytic / native-op checks), bit switching, registry."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from core.quant import (
    GAUSSIAN_COEFS,
    QUANTIZERS,
    create_quantizer,
    functional,
    lsq_fake_quant,
)

torch.manual_seed(0)
NAMES = sorted(QUANTIZERS)


def test_registry_has_every_paper_quantizer():
    assert {"lsq", "pact", "dorefa", "hwgq", "gaussian", "sign"} <= set(QUANTIZERS)


def test_unknown_name_and_bad_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown quantizer"):
        create_quantizer("nope", 4)
    with pytest.raises(ConfigError, match="bad options"):
        create_quantizer("lsq", 4, not_an_option=1)
    with pytest.raises(ConfigError, match="does not support 7 bits"):
        create_quantizer("hwgq", 7)
    with pytest.raises(ConfigError, match="does not support 2 bits"):
        create_quantizer("sign", 2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("role", ["weight", "activation"])
def test_every_supported_bit_runs_and_32_is_not_quantized(name, role):
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    q = create_quantizer(name, 32, role=role)
    for bits in q.supported_bits:
        q.bits = bits
        y = q(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.sum().backward()
        if bits < 32:
            n_levels = torch.unique(y.detach()).numel()
            assert n_levels <= 2**bits + (1 if name == "dorefa" else 0)
    q.bits = 32
    expected = torch.relu(x) if name == "hwgq" else x
    assert torch.equal(q(x), expected)


# -- HWGQ / Gaussian (EdMIPS) ---------------------------------------------------------------------
def test_hwgq_documented_levels_and_gradient():
    q = create_quantizer("hwgq", 2)
    y = q(torch.linspace(-1, 3, 4001))
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 0.538, 1.076, 1.614]))
    assert q(torch.tensor([0.26, 0.30])).tolist() == pytest.approx([0.0, 0.538])
    x = torch.tensor([-0.5, 0.0, 0.1, 1.0, 1.613, 1.615, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0, 0, 1, 1, 1, 0, 0]  # 1 on (0, 3 * 0.538)


def test_hwgq_custom_steps():
    q = create_quantizer("hwgq", 8, steps={8: 0.02})
    assert q(torch.tensor([100.0])).item() == pytest.approx(0.02 * 255)


def test_gaussian_midrise_levels_step_and_identity_gradient():
    w = torch.randn(2000, requires_grad=True)
    for bits in (1, 2, 3, 4):
        q = create_quantizer("gaussian", bits)
        y = q(w)
        step = GAUSSIAN_COEFS[bits] * w.detach().std(unbiased=True)
        levels = torch.unique(y.detach())
        expected = (torch.arange(2**bits) - (2**bits - 1) / 2) * step
        assert torch.allclose(levels, expected, atol=1e-5)
        w.grad = None
        (y * torch.arange(2000.0)).sum().backward()
        assert torch.equal(w.grad, torch.arange(2000.0))  # identity, no clip mask


def _official_gaussian(w: torch.Tensor, coef: float, bits: int) -> torch.Tensor:
    """The official EdMIPS weight quantizer's arithmetic: ``std().item()`` times the constant in Python
    floats (float64), used by float32 tensor ops (which cast the step and the clip bound once)."""
    step = coef * w.std().item()
    bound = (2**bits / 2 - 0.5) * step
    return ((torch.round(w / step + 0.5) - 0.5) * step).clamp(min=-bound, max=bound)


def _one_ulp_case(seed: int, bits: int) -> torch.Tensor | None:
    """A float32 weight whose step ``coef * std`` is one ulp apart in float32 and float64 arithmetic, with
    a weight at ``k`` float64-steps that the float32 step puts in a different level. A zero-mean bulk plus
    two pairs ``+-v1`` (the probe) and ``+-v2`` with ``v1^2 + v2^2 = 2 var``, which keeps the std."""
    coef = GAUSSIAN_COEFS[bits]
    half = torch.randn(2048, generator=torch.Generator().manual_seed(seed)) * 0.05
    bulk = torch.cat([half, -half])
    std = bulk.std()
    step32, step64 = coef * std, torch.tensor(coef * std.item())
    if step32 == step64:
        return None
    up, var = torch.tensor(float("inf")), std.double() ** 2
    for k in range(1, 2 ** (bits - 1)):
        v1 = (k * torch.minimum(step32, step64)).float()
        for _ in range(6):
            if v1.double() ** 2 >= 2 * var:
                return None
            v2 = torch.sqrt(2 * var - v1.double() ** 2).float()
            for _ in range(8):
                w = torch.cat([bulk, torch.stack([v1, -v1, v2, -v2])])
                if w.std() == std and not torch.equal(torch.round(w / step32 + 0.5),
                                                      torch.round(w / step64 + 0.5)):
                    return w
                v2 = torch.nextafter(v2, up)
            v1 = torch.nextafter(v1, up)
    return None


@pytest.mark.parametrize("bits", [2, 3])
def test_gaussian_step_is_built_in_float64_and_the_weights_follow_it(bits):
    """Where ``coef * std`` in float32 is one ulp off the float64 product, a weight lands in another level;
    every path (single quantizer, fused mixture, autograd reference, compiled) follows the float64 step,
    bit for bit, as the official code does."""
    from core.quant import gaussian_mixture, set_compiled

    w = next(w for w in (_one_ulp_case(seed, bits) for seed in range(40)) if w is not None)
    coef = GAUSSIAN_COEFS[bits]
    step32, step64 = coef * w.std(), torch.tensor(coef * w.std().item())
    assert step32 != step64 and torch.nextafter(step32, step64) == step64  # one ulp apart
    levels32, levels64 = torch.round(w / step32 + 0.5), torch.round(w / step64 + 0.5)
    assert 1 <= (levels32 != levels64).sum() <= 2  # the probe (and perhaps its mirror) changes level
    want = _official_gaussian(w, coef, bits)
    gates = torch.tensor([0.0, 1.0, 0.0])
    outputs = {"quantizer": create_quantizer("gaussian", bits, clip_bound="float64")(w),
               "mixture": gaussian_mixture(w, gates, (GAUSSIAN_COEFS[1], coef, GAUSSIAN_COEFS[4]),
                                           (1, bits, 4), "float64"),
               "reference": functional.gaussian_midrise(w, coef, bits, "float64")}
    set_compiled(True, backend="aot_eager")
    try:
        outputs["compiled"] = create_quantizer("gaussian", bits, clip_bound="float64")(w)
    finally:
        set_compiled(False)
    for name, out in outputs.items():
        assert torch.equal(out, want), name
    # the default clip bound is the grid's top level: the same levels, and every value on the grid
    grid_bound = create_quantizer("gaussian", bits)(w)
    assert torch.equal(torch.round(grid_bound / step64 * 2), torch.round(want / step64 * 2))
    assert torch.equal(grid_bound.abs().max(), (2**bits / 2 - 0.5) * step64.float())


def test_gaussian_clip_bound_options_differ_by_at_most_one_ulp_at_the_clipped_weights():
    """``clip_bound="float64"`` (official) vs ``"grid"``: only the clipped weights move, by one ulp, in
    about a quarter of tensors; an unknown option is one clear error."""
    moved = 0
    for seed in range(24):
        w = torch.randn(4096, generator=torch.Generator().manual_seed(seed)) * 0.05
        grid, official = (create_quantizer("gaussian", 2, clip_bound=c)(w) for c in ("grid", "float64"))
        diff = grid != official
        if diff.any():
            moved += 1
            assert torch.equal(grid.abs()[diff], torch.full_like(grid[diff], float(grid.abs().max())))
            ulp = torch.finfo(torch.float32).eps * grid.abs().max()
            assert float((grid - official).abs().max()) <= float(ulp)
        assert torch.equal(official, _official_gaussian(w, GAUSSIAN_COEFS[2], 2))
    assert 0 < moved < 24
    with pytest.raises(ConfigError, match="clip_bound"):
        create_quantizer("gaussian", 2, clip_bound="double")


def _optimal_uniform_midrise_step(bits: int) -> float:
    """Minimum-MSE step of a 2^b-level mid-rise uniform quantizer on N(0, 1) (closed-form cell moments)."""
    from scipy import optimize

    def mse(step: float) -> float:
        c = (torch.arange(2**bits, dtype=torch.float64) - (2**bits - 1) / 2) * step
        inner = (c[1:] + c[:-1]) / 2
        lo = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), inner])
        hi = torch.cat([inner, torch.tensor([math.inf], dtype=torch.float64)])
        mass = torch.special.ndtr(hi) - torch.special.ndtr(lo)
        pdf = lambda t: torch.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        tpdf = lambda t: torch.nan_to_num(t * pdf(t))  # t * pdf(t) -> 0 at +-inf  # noqa: E731
        m1 = pdf(lo) - pdf(hi)  # E[x; cell]
        m2 = mass + tpdf(lo) - tpdf(hi)  # E[x^2; cell]
        return float((m2 - 2 * c * m1 + c * c * mass).sum())

    return optimize.minimize_scalar(mse, bounds=(1e-3, 3.0), method="bounded", options={"xatol": 1e-7}).x


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_gaussian_constants_are_lloyd_max_uniform_steps(bits):
    # reproduces the published 1-4 bit values (to their rounding), which backs the derived 5-8 bit ones
    assert _optimal_uniform_midrise_step(bits) == pytest.approx(GAUSSIAN_COEFS[bits], abs=1e-3)


# -- LSQ ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed,bits", [(False, 2), (False, 4), (True, 2), (True, 3)])
def test_lsq_levels(signed, bits):
    q = create_quantizer("lsq", bits, signed=signed)
    q(torch.ones(4))  # initialise
    with torch.no_grad():
        q.step.fill_(0.5)
    y = q(torch.linspace(-10, 10, 1001))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    assert torch.allclose(torch.unique(y), torch.arange(lo, hi + 1) * 0.5)


@pytest.mark.parametrize("signed", [False, True])
def test_lsq_native_option_matches_torch_native_op(signed):
    x = torch.randn(3, 8, 5, 5) * 2
    bits = 3
    q = create_quantizer("lsq", bits, signed=signed)
    qn, qp = q.qrange(bits)
    step = torch.tensor(0.37)
    g = 1.0 / math.sqrt(qp * x.numel())
    x1, s1 = x.clone().requires_grad_(), step.clone().requires_grad_()
    x2, s2 = x.clone().requires_grad_(), step.clone().requires_grad_()
    y1 = functional.lsq_fake_quant_native(x1, s1, qn, qp, g)
    y2 = torch._fake_quantize_learnable_per_tensor_affine(x2, s2.reshape(1), torch.zeros(1), qn, qp, g)
    grad = torch.randn_like(x)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(s1.grad, s2.grad.reshape(()), atol=1e-5)


def test_lsq_per_channel_native_option_matches_native_op():
    w = torch.randn(6, 4, 3, 3)
    q = create_quantizer("lsq", 4, role="weight", per_channel=True, channels=6, gradient="native")
    w1 = w.clone().requires_grad_()
    y1 = q(w1)
    qn, qp = q.qrange(4)
    step = q.step[0].detach().clone().requires_grad_()
    w2 = w.clone().requires_grad_()
    g = 1.0 / math.sqrt(qp * w.numel() / 6)  # per-channel: elements sharing one step
    y2 = torch._fake_quantize_learnable_per_channel_affine(w2, step, torch.zeros(6), 0, qn, qp, g)
    grad = torch.randn_like(w)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5)
    assert torch.allclose(q.step.grad[0], step.grad, atol=1e-5)


def _paper_lsq_gradients(x: torch.Tensor, step: float, qn: int, qp: int, g: float, upstream: torch.Tensor):
    """LSQ eq. 3 (``-Q_N = qn``) and the straight-through input gradient, element by element in float64."""
    gx, gs = [], 0.0
    for v, u in zip(x.double().flatten().tolist(), upstream.double().flatten().tolist()):
        r = v / step
        if r <= qn:
            gx.append(0.0)
            gs += u * qn
        elif r >= qp:
            gx.append(0.0)
            gs += u * qp
        else:
            gx.append(u)
            gs += u * (round(r) - r)  # Python's round is half-even like torch.round
    return torch.tensor(gx).reshape(x.shape), gs * g


@pytest.mark.parametrize("signed", [False, True])
def test_lsq_gradients_follow_the_paper_in_the_half_step_bands(signed):
    """Just outside the range, ``qp <= x/s < qp + 1/2`` and ``qn - 1/2 < x/s <= qn``, the paper (and the
    official LIMPQ code) passes 0 to the input and ``qp`` / ``qn`` to the step; torch's native op passes 1
    and ``round(x/s) - x/s``."""
    bits, step = 2, 0.25
    q = create_quantizer("lsq", bits, signed=signed)
    qn, qp = q.qrange(bits)
    gen = torch.Generator().manual_seed(1)
    band_hi = (qp + 0.5 * torch.rand(64, generator=gen)) * step  # qp <= x/s < qp + 1/2
    band_lo = (qn - 0.5 * torch.rand(64, generator=gen)) * step  # qn - 1/2 < x/s <= qn
    inner = (qn + (qp - qn) * torch.rand(64, generator=gen)) * step
    outer = torch.tensor([qn - 3.0, qp + 3.0]) * step
    x = torch.cat([band_hi, band_lo, inner, outer])
    upstream = torch.randn(x.shape, generator=gen)
    g = 1.0 / math.sqrt(qp * x.numel())
    want_x, want_s = _paper_lsq_gradients(x, step, qn, qp, g, upstream)
    with torch.no_grad():
        q(torch.ones(4))  # initialise, then set the step
        q.step.fill_(step)
    for use_quantizer in (False, True):  # the function, and the quantizer's default gradient="paper"
        xg, sg = x.clone().requires_grad_(), torch.tensor(step, requires_grad=True)
        if use_quantizer:
            q.step.grad = None
            (q(xg) * upstream).sum().backward()
            got_s = q.step.grad.reshape(())
        else:
            (lsq_fake_quant(xg, sg, qn, qp, g) * upstream).sum().backward()
            got_s = sg.grad
        torch.testing.assert_close(xg.grad, want_x.float(), atol=0, rtol=0)
        assert got_s.item() == pytest.approx(want_s, rel=1e-5)
    # the native option has the same values and differs exactly in the bands (the first 128 elements)
    xn, sn = x.clone().requires_grad_(), torch.tensor(step, requires_grad=True)
    (functional.lsq_fake_quant_native(xn, sn, qn, qp, g) * upstream).sum().backward()
    differs = set((xn.grad != xg.grad).nonzero().flatten().tolist())
    assert differs <= set(range(128)) and len(differs) > 120
    assert torch.equal(functional.lsq_fake_quant_native(x, torch.tensor(step), qn, qp, g),
                       lsq_fake_quant(x, torch.tensor(step), qn, qp, g))


def test_lsq_unknown_gradient_is_a_config_error():
    with pytest.raises(ConfigError, match="lsq gradient must be one of"):
        create_quantizer("lsq", 4, gradient="ste")


def test_lsq_init_rules():
    w = torch.randn(16, 8) * 0.1 + 0.02
    q = create_quantizer("lsq", 4, role="weight")
    q(w)
    mu, sigma = w.mean(), w.std()
    assert q.step_for(4).item() == pytest.approx((max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 8).item())
    q = create_quantizer("lsq", 4, role="weight", init="lsq")
    q(w)
    assert q.step_for(4).item() == pytest.approx((2 * w.abs().mean() / math.sqrt(7)).item())
    x = torch.rand(4, 3, 5, 5)
    q = create_quantizer("lsq", 3)
    q(x)
    assert q.step_for(3).item() == pytest.approx((2 * x.abs().mean() / math.sqrt(7)).item())
    q(x * 100)  # initialised once: a second forward does not re-initialise
    assert q.step_for(3).item() == pytest.approx((2 * x.abs().mean() / math.sqrt(7)).item())
    pc = create_quantizer("lsq", 2, role="weight", per_channel=True, channels=16)
    pc(w)
    m, s = w.mean(1), w.std(1)
    assert torch.allclose(pc.step_for(2), torch.maximum((m - 3 * s).abs(), (m + 3 * s).abs()) / 2)


def test_lsq_candidate_bits_hold_one_step_each_and_init_lazily():
    q = create_quantizer("lsq", 4, candidate_bits=[6, 5, 4, 3, 2])
    x = torch.rand(64)
    q(x)
    assert q.initialized.tolist() == [False, False, True, False, False]
    q.bits = 2
    q(x)
    assert q.initialized.tolist() == [False, False, True, False, True]
    assert q.step_for(2).item() == pytest.approx((2 * x.mean() / math.sqrt(3)).item())
    assert q.step_for(4).item() == pytest.approx((2 * x.mean() / math.sqrt(15)).item())
    assert set(q.importance_indicators()) == {6, 5, 4, 3, 2}
    q(x).sum().backward()
    assert q.step.grad[4].abs().item() > 0 and q.step.grad[2].abs().item() == 0  # only the active step
    with pytest.raises(ConfigError):
        q.bits = 7
    q.bits = 32
    assert torch.equal(q(x), x)


def test_lsq_lazy_init_survives_state_dict_round_trip():
    q = create_quantizer("lsq", 4)
    q(torch.rand(32))
    state = q.state_dict()
    assert "initialized" in state
    fresh = create_quantizer("lsq", 4)
    fresh.load_state_dict(state)
    fresh(torch.rand(32) * 50)  # must not re-initialise from this batch
    assert fresh.step_for(4).item() == pytest.approx(q.step_for(4).item())


def test_lsq_per_channel_grad_scale_whole_tensor_option():
    """``grad_scale="tensor"`` (BASQ's official code) scales a per-channel step's gradient by
    ``1 / sqrt(Q_p * numel)`` instead of ``1 / sqrt(Q_p * numel / C)``: sqrt(C) times smaller."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    grads = {}
    for mode in ("per_step", "tensor"):
        q = create_quantizer("lsq", 3, role="weight", per_channel=True, channels=6, grad_scale=mode)
        q(w).sum().backward()
        grads[mode] = q.step.grad.clone()
    assert torch.allclose(grads["tensor"] * math.sqrt(6), grads["per_step"])
    with pytest.raises(ConfigError, match="grad_scale"):
        create_quantizer("lsq", 3, grad_scale="batch")


def test_lsq_per_channel_needs_channels():
    with pytest.raises(ConfigError, match="channels"):
        create_quantizer("lsq", 4, per_channel=True)


# -- PACT, DoReFa, sign -----------------------------------------------------------------------------
@pytest.mark.parametrize("rounding_grad", [False, True])
def test_pact_levels_clip_and_alpha_gradient(rounding_grad):
    q = create_quantizer("pact", 2, alpha_init=3.0, rounding_grad=rounding_grad)
    x = torch.tensor([-1.0, 0.4, 1.2, 2.9, 3.0, 7.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 1.0, 3.0, 3.0, 3.0])
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 0, 0]
    ys = torch.tensor([0.4, 1.2, 2.9])  # inside: rounding error (round(y/s) - y/s) / levels
    inside = ((torch.round(ys) - ys) / 3).sum().item() if rounding_grad else 0.0
    assert q.alpha.grad.item() == pytest.approx(2.0 + inside, abs=1e-6)  # x >= alpha: 3.0, 7.0


def test_dorefa_weight_and_activation():
    w = torch.randn(100, requires_grad=True)
    q = create_quantizer("dorefa", 2, role="weight")
    y = q(w)
    t = torch.tanh(w.detach())
    expected = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * 3) / 3 - 1
    assert torch.allclose(y, expected)
    assert y.min() >= -1 and y.max() <= 1
    q.bits = 1
    y1 = q(w)
    assert torch.allclose(y1.abs(), w.detach().abs().mean().expand(100))
    a = create_quantizer("dorefa", 2)
    x = torch.tensor([-0.5, 0.2, 0.5, 1.5], requires_grad=True)
    out = a(x)
    assert out.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    out.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 0]


def test_sign_scale_and_clipped_ste():
    w = torch.tensor([[0.5, -2.0, 0.0], [-0.1, 0.3, 1.5]], requires_grad=True)
    q = create_quantizer("sign", 1, per_channel_scale=True)
    y = q(w)
    scale = w.detach().abs().mean(1, keepdim=True)
    assert torch.allclose(y, torch.tensor([[1.0, -1, 1], [-1, 1, 1]]) * scale)
    y.sum().backward()
    assert w.grad.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert torch.equal(create_quantizer("sign", 1)(w.detach()).abs(), torch.ones(2, 3))


def test_functional_lsq_is_scriptable_pure_function():
    x = torch.tensor([0.1, 0.26, 10.0])
    assert functional.lsq_fake_quant(x, torch.tensor(0.5), 0, 3, 1.0).tolist() == [0.0, 0.5, 1.5]
